"""The saved policies of ``agents/policies/`` as annotators: the entry ``policies`` of the group
``hiseg_sim.annotators`` in ``pyproject.toml``, so the annotator registry never imports this layer."""

from __future__ import annotations

from hiseg_sim.registry import factory_provider

__all__ = ["POLICIES"]


def _names() -> list[str]:
    from hiseg_sim.policies.store import policy_names

    return policy_names()


def _build(name: str, **overrides):
    from hiseg_sim.policies.store import PolicyAnnotator

    return PolicyAnnotator(name, **overrides)


#: One entry per saved policy directory.
POLICIES = factory_provider(_names, _build)
