"""Every seed in hiseg-sim, derived in one place.

All randomness flows from a study seed (or an episode seed derived from it) through
:class:`numpy.random.SeedSequence`: a sequence of integer keys, strings hashed stably first, so
the same keys give the same numbers in every process, executor and Python version (``hash`` would
not). The functions below are the only derivations; the numbers every shipped result rests on
come from them, so their arithmetic is fixed.

>>> episode_seed(0, "expert", "LIDC-IDRI-0001/n1", 0) == episode_seed(0, "expert", "LIDC-IDRI-0001/n1", 0)
True
>>> a, b = episode_streams(5, "case-1")
>>> float(a.random()) != float(b.random())
True
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

__all__ = [
    "case_key_rng",
    "episode_seed",
    "episode_streams",
    "keyed_rng",
    "person_episode_seed",
    "sequence_rng",
    "stable_int",
    "text_key",
]


def stable_int(text: str) -> int:
    """A 64-bit key of ``text`` (SHA-256): the same in every process and Python version."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def text_key(text: str) -> int:
    """A 32-bit key of ``text`` (CRC-32), for the per-case streams below."""
    return zlib.crc32(str(text).encode())


def episode_seed(study_seed: int, arm: str, case_id: str, replicate: int) -> int:
    """The seed of one episode of a study: ``SeedSequence([study_seed, h(arm), h(case_id), replicate])``
    → uint32 (``h`` = :func:`stable_int`)."""
    ss = np.random.SeedSequence([int(study_seed), stable_int(arm), stable_int(case_id), int(replicate)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def sequence_rng(study_seed: int, replicate: int) -> np.random.Generator:
    """The generator of the order in which person ``replicate`` of a sequence study meets the cases."""
    return np.random.default_rng(
        np.random.SeedSequence([int(study_seed), stable_int("sequence-order"), int(replicate)])
    )


def episode_streams(seed: int, case_id: str, n: int = 2) -> list[np.random.Generator]:
    """``n`` independent generators of one episode: [perception, annotator, ...], spawned from
    ``SeedSequence([seed, crc32(case_id), 0x5EED])``."""
    ss = np.random.SeedSequence([int(seed), text_key(case_id), 0x5EED])
    return [np.random.default_rng(s) for s in ss.spawn(n)]


def person_episode_seed(person_seed: int, case_id: str) -> int:
    """The episode seed of ``case_id`` for the person of ``person_seed`` in
    :func:`hiseg_sim.annotators.harness.evaluate` (independent of the order of the cases)."""
    return int(person_seed) * 100003 + text_key(case_id) % 100003


def case_key_rng(key: str) -> np.random.Generator:
    """A generator keyed by a case alone (what every person on the case shares, e.g. its difficulty)."""
    return np.random.default_rng(text_key(key))


def keyed_rng(seed: int, *tags: int) -> np.random.Generator:
    """``SeedSequence([seed, *tags])``: one stream per purpose (a tag per purpose) of one seed."""
    return np.random.default_rng([int(seed), *(int(t) for t in tags)])
