"""Every shape the annotation app exchanges or keeps, declared once (pydantic).

Requests and responses of the HTTP API (:mod:`hiseg_sim.annotate.app`) and the rows of the
session store (:mod:`hiseg_sim.annotate.store`, which derives its table columns from the record
models below). Coordinates are viewport pixels: points ``(x, y)`` (``x`` the column, ``y`` the
row), boxes ``XYXY``, as in :mod:`hiseg_sim.env.actions`. Times are wall-clock milliseconds since
the Unix epoch (``*_ms``); the page's clock for what the person did (``client_ms``), the server's
for when it was recorded (``server_ms``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hiseg_sim.env.actions import Action, action_from_dict

__all__ = [
    "FEEDBACK_MODES",
    "FeedbackMode",
    "GROUP_PATTERN",
    "NAME_PATTERN",
    "ActionIn",
    "ActionRecord",
    "ActionRequest",
    "EpisodeRecord",
    "FeedbackView",
    "NextRequest",
    "SessionRecord",
    "SessionState",
    "SlicePrompts",
    "SliceView",
    "StartRequest",
]

#: Participant ids and study names: plain tokens (no dots, no path separators, no spaces).
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
#: Groups: also the characters of a study arm's label (``non_medical+score``).
GROUP_PATTERN = r"^[A-Za-z0-9_.+@-]{1,64}$"
FEEDBACK_MODES = ("none", "score", "worked_example")
FeedbackMode = Literal["none", "score", "worked_example"]


# ---- requests ---------------------------------------------------------------------------------
class ActionIn(BaseModel):
    """One action as the page sends it: the dict of :func:`hiseg_sim.env.actions.action_to_dict`.

    ``point``: ``x``, ``y``, ``positive``; ``box``: ``x0``, ``y0``, ``x1``, ``y1`` (XYXY);
    ``propagate``: ``direction`` (+1 = slice z + 1, -1 = z - 1); ``undo``, ``accept``, ``next``
    (z + 1), ``prev`` (z - 1): no field.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["point", "box", "undo", "accept", "next", "prev", "propagate"]
    x: float | None = None
    y: float | None = None
    positive: bool | None = None
    x0: float | None = None
    y0: float | None = None
    x1: float | None = None
    y1: float | None = None
    direction: Literal[1, -1] | None = None

    def to_action(self) -> Action:
        """The env's typed action (fields checked as the typed action checks them)."""
        return action_from_dict(self.model_dump(exclude_none=True))


class StartRequest(BaseModel):
    """Start (or resume) a session: who annotates, in which group of which study."""

    model_config = ConfigDict(extra="forbid")
    participant: str = Field(pattern=NAME_PATTERN, description="pseudonymous participant id, never a name")
    group: str = Field(pattern=GROUP_PATTERN, description="a study arm's label, or any group name")
    study: str = Field(pattern=NAME_PATTERN)
    client_ms: int = Field(description="page clock when the person pressed Start")


class ActionRequest(BaseModel):
    """One action of the person. ``seq`` is the session's action number the page expects to write
    (``SessionState.next_seq``): a repeated request (a retry) is answered without acting twice."""

    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=1)
    action: ActionIn
    client_ms: int = Field(description="page clock when the person acted")
    pointer: tuple[float, float] | None = Field(
        None, description="(x, y) viewport pixels of the pointer, None when it was off the image"
    )


class NextRequest(BaseModel):
    """Leave the feedback of a nodule for case ``case_index`` (== n_cases: finish the session)."""

    model_config = ConfigDict(extra="forbid")
    case_index: int = Field(ge=0)
    client_ms: int


# ---- responses --------------------------------------------------------------------------------
class SlicePrompts(BaseModel):
    """The prompts behind the mask of the slice in view: ``(x, y, label)`` clicks (1 positive,
    0 negative) and the XYXY box, viewport pixels."""

    points: list[tuple[float, float, int]] = []
    box: tuple[float, float, float, float] | None = None


class FeedbackView(BaseModel):
    """What the study shows after a nodule: nothing (``none``), the Dice against the reference and
    the person's seconds (``score``), and also the reference outline (``worked_example``)."""

    mode: FeedbackMode
    dice: float | None = None
    seconds: float | None = None


class SliceView(BaseModel):
    """One slice of the slab as the page draws it. ``image``: base64 of ``uint8`` ``(size, size)``
    row-major (lung window); ``mask`` / ``reference``: base64 of ``numpy.packbits`` of ``bool``
    ``(size, size)`` row-major (``reference`` only in a worked-example feedback)."""

    slice: int = Field(description="index in the slab, 0-based")
    image: str
    mask: str
    reference: str | None = None
    prompts: SlicePrompts = SlicePrompts()


class SessionState(BaseModel):
    """Where the person is: the response to every request."""

    session_id: str
    participant: str
    group: str
    study: str
    feedback_mode: FeedbackMode
    phase: Literal["annotating", "feedback", "done"]
    case_index: int
    n_cases: int
    case_key: str | None = None
    next_seq: int
    step: int = Field(description="actions taken on this nodule")
    n_slices: int
    size: int
    z0: int = Field(description="volume index of the slab's first slice")
    view: SliceView | None = None
    slices_with_mask: list[int] = []
    iou_pred: float = 0.0
    invalid_action: str = ""
    feedback: FeedbackView | None = None
    server_ms: float = Field(0.0, description="time the server spent on this request")
    decode_ms: float | None = Field(
        None, description="of it, the segmenter's decode of the last action (None if it decoded nothing)"
    )


# ---- store rows -------------------------------------------------------------------------------
class SessionRecord(BaseModel):
    """One person's session (table ``sessions``)."""

    session_id: str
    participant: str
    grp: str
    study: str
    cohort: str
    segmenter: str
    env_id: str
    feedback: FeedbackMode
    practice: int | None = None
    case_keys: list[str]
    created_ms: int
    finished_ms: int | None = None


class EpisodeRecord(BaseModel):
    """One nodule of a session (table ``episodes``): what replay needs to reset the env on it.
    Only spacing and geometry of the scan, never a DICOM header field."""

    session_id: str
    episode: int
    case_key: str
    seed: int
    viewport: dict
    start_slice: int
    spacing_zyx: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]
    started_ms: int
    started_client_ms: int


class ActionRecord(BaseModel):
    """One action and its outcome (table ``actions``). ``slice`` is the volume index in view after
    the action; ``mask_*`` the slab's masks after it, packed by :func:`hiseg_sim.codec.pack_mask`
    in volume coordinates of the slab and viewport pixels (origin ``(z0, 0, 0)``)."""

    session_id: str
    seq: int
    episode: int
    step: int
    client_ms: int
    server_ms: int
    pointer_x: float | None = None
    pointer_y: float | None = None
    action: dict
    prompt: dict | None = None
    slice: int
    invalid_action: str
    dice: float
    iou: float
    iou_pred: float
    reward: float
    sim_seconds: float
    sim_seconds_total: float
    terminated: bool
    truncated: bool
    mask_z0: int
    mask_y0: int
    mask_x0: int
    mask_dz: int
    mask_dy: int
    mask_dx: int
    mask_bits: bytes
