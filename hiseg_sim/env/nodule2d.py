"""``hiseg_sim/NoduleSeg2D-v0``: prompt a promptable segmenter to outline one nodule on one CT slice."""

from __future__ import annotations

from hiseg_sim.env.core import NoduleSegBase

__all__ = ["NoduleSeg2DEnv"]


class NoduleSeg2DEnv(NoduleSegBase):
    """Outline one lung nodule on its key slice by prompting a Segment Anything model.

    ## Description

    A person (or a click robot, or a policy) sits at a CT viewer zoomed onto a nodule and prompts
    a promptable segmenter (LiteMedSAM by default) with clicks and boxes until the mask looks
    right, then accepts it. Each episode is one nodule of one :class:`~hiseg_sim.data.case.Case`
    on one slice, the *key slice*: the slice with the largest ground-truth area, ties broken by
    the slice nearest the nodule's centre of mass (:attr:`Case.key_slice`). The slice is shown
    through a square viewport of ``viewport_px`` pixels at the native pixel spacing, centred on a
    noisy detection point, never exactly on the nodule (see :mod:`hiseg_sim.env.viewport`), and
    padded with air (-1000 HU) where it runs past the volume (masks are clipped to the scan).
    The slice is encoded once, at reset; each prompt is one decoder call, and the step adds to it
    only per-slice counting, the prompt map and the time model (``hiseg_sim.bench`` measures it).

    ## Action Space

    ``MultiDiscrete([5, W, H, W, H])`` with ``W = H = viewport_px``: ``[kind, x, y, x2, y2]``,
    ``(x, y)`` viewport pixels (column, row). Scripts may pass typed actions instead
    (:mod:`hiseg_sim.env.actions`); the mapping is:

    ====  ==========================================  ==========================================
    kind  typed action                                effect
    ====  ==========================================  ==========================================
    0     ``PointAction(x, y, positive=True)``        positive click at (x, y)
    1     ``PointAction(x, y, positive=False)``       negative click at (x, y)
    2     ``BoxAction(x, y, x2, y2)``                 box with corners (x, y), (x2, y2)
    3     ``Undo()``                                  take back the last prompt
    4     ``Accept()``                                accept the mask; ends the episode
    ====  ==========================================  ==========================================

    Prompts accumulate on the slice: a click is decoded together with all earlier clicks, the
    current box and (``mask_feedback=True``) the previous low-resolution logits as a mask prompt,
    as in SAM's interactive loop; a box replaces the previous box, keeps the clicks and is
    decoded without the mask prompt. Undo restores the exact state before the last prompt.

    Bad actions (flagged by a code in ``info["invalid_action"]``; never an exception):

    ==========================  ====================================================================
    code                        behaviour
    ==========================  ====================================================================
    ``"edge_point"``            a click on the viewport's border pixels: executed as given
    ``"reversed_box"``          ``x2 < x`` or ``y2 < y``: the corners are sorted, then executed
    ``"zero_area_box"``         width or height < 1 px: no-op (time charged, no decode)
    ``"nothing_to_undo"``       undo with no prompt on the slice: no-op
    ``"nothing_to_accept"``     accept before any prompt (or after undoing all): no-op, episode goes on
    ``"prompt_rejected"``       the segmenter refused the prompt (``PromptError``): no-op
    ==========================  ====================================================================

    An action outside the space (a kind >= 5, a coordinate outside the viewport, a non-integer
    array, a NaN) fails the space check and raises :class:`~hiseg_sim.env.actions.InvalidActionError`
    (a ``ValueError``); the step is not taken and the episode goes on. A typed action refuses a
    field of the wrong type when made (``PointAction("3", 4)``, ``positive="no"``) with
    :class:`~hiseg_sim.env.actions.ActionTypeError` (a ``TypeError`` and an ``InvalidActionError``).

    ## Observation Space

    ``Dict`` with no ground truth and nothing derived from it:

    - ``"image"``: ``Box(0, 255, (1, H, W), uint8)``: the viewport in the display window
      (default lung window, level -600 HU, width 1500 HU).
    - ``"mask"``: ``Box(0, 255, (1, H, W), uint8)``: the current mask, 255 inside.
    - ``"prompts"``: ``Box(0, 255, (3, H, W), uint8)``: channel 0 positive clicks, 1 negative
      clicks (3 x 3 squares), 2 the box outline.
    - ``"iou_pred"``: ``Box(0, 1, (1,), float32)``: the model's predicted IoU of the mask (0 before
      any prompt; clipped to [0, 1]).
    - ``"step"``: ``Box(0, 1e6, (1,), float32)``: actions taken so far.
    - ``"seconds"``: ``Box(0, 1e7, (1,), float32)``: simulated seconds used so far.

    ## Rewards

    ``reward = (Dice after - Dice before) - time_penalty * seconds``, with Dice of the mask
    against the ground truth of the whole key slice (ground truth outside the viewport counts as
    missed) and ``seconds`` the simulated time the action took (:mod:`hiseg_sim.timing`). The
    return of an episode is its final Dice minus ``time_penalty`` times its total seconds; with
    ``time_penalty = 0`` it is the final Dice.

    ## Starting State

    A case drawn uniformly from ``cases`` with ``np_random`` (or ``options["case_id"]`` /
    ``options["case_index"]``), the viewport placed by a noisy detection point (or
    ``options["viewport"]``, a dict from ``info["viewport"]``, to replay), no prompt, an empty
    mask, the pointer at the viewport centre, Dice 0. ``options["time_model"]`` (a
    :class:`~hiseg_sim.timing.TimeModel`) charges this episode instead of ``time_model``: an
    annotator group's scaled model (:func:`hiseg_sim.annotators.harness.run_episode` passes it).

    Reset options (``options`` is ``None`` or a dict with only these keys; anything else raises
    :class:`~hiseg_sim.env.validation.EnvArgumentError`, a ``ValueError``, or, for a wrong type,
    :class:`~hiseg_sim.env.validation.EnvArgumentTypeError`, a ``TypeError``; a reset that
    raises leaves no episode running):

    - ``"case_id"`` (str): one of the cases' ids; not together with ``"case_index"``.
    - ``"case_index"`` (int): in ``[0, len(cases))``.
    - ``"viewport"`` (dict): exactly the integer keys ``z0``, ``n_slices``, ``y0``, ``x0``,
      ``size`` of ``info["viewport"]``, with ``size == viewport_px``, ``n_slices == 1``, ``z0``
      the case's key slice, and ``|y0|``, ``|x0|`` at most 2**31 - 1 (a viewport past the scan
      is padded with air).
    - ``"start_slice"`` (int): accepted for symmetry with the 3-D env; must be the key slice.
    - ``"time_model"``: a :class:`~hiseg_sim.timing.TimeModel` or ``None``.

    ## Episode End

    Terminates on a valid ``Accept``. Truncated by the ``TimeLimit`` wrapper after
    ``max_episode_steps`` actions (20 at registration: the click budget of the RITM / NoC
    protocol). ``step`` after the end raises :class:`~hiseg_sim.env.core.ResetNeeded`.

    ## Information

    Returned by ``step`` (and, with zeros, by ``reset``):

    - ``"dice"`` (float): Dice of the current mask against the ground truth.
    - ``"iou"`` (float): IoU of the same.
    - ``"seconds"`` (float): simulated seconds charged for this action.
    - ``"seconds_total"`` (float): simulated seconds since reset.
    - ``"n_prompts"`` (int): prompts decoded since reset (clicks, boxes), undone ones included.
    - ``"iou_pred"`` (float): the model's predicted IoU of the mask in view (0 without a mask).
    - ``"invalid_action"`` (str): ``""``, or a code from the bad-action table above.

    ``reset`` adds ``"case_id"`` (str) and ``"viewport"`` (dict: ``z0``, ``n_slices``, ``y0``,
    ``x0``, ``size``; volume indices of the viewport's slab and top-left pixel).

    ## Arguments

    ``gym.make("hiseg_sim/NoduleSeg2D-v0", **kwargs)`` (after ``import hiseg_sim``). Each is
    checked at construction (``cases`` when first loaded) against the bound given here; a value
    outside it raises :class:`~hiseg_sim.env.validation.EnvArgumentError` (a ``ValueError``),
    one of the wrong type :class:`~hiseg_sim.env.validation.EnvArgumentTypeError` (a
    ``TypeError``). Integers are ``int`` or numpy integers, never ``bool``; numbers are finite.

    - ``cases``: a sequence of :class:`~hiseg_sim.data.case.Case` with distinct ``case_id`` (the
      same object twice is allowed), or a callable returning one; default ``None`` loads the
      default cohort (``hiseg_sim.data.cohort.load_cohort("default")``) on first reset.
    - ``segmenter``: a registry name (default ``"litemedsam"``), a Segmenter, or a callable
      building one; built lazily, in the worker process under vector envs.
    - ``cache_dir``: ``None``, a ``str`` or a path: on-disk embedding cache shared between
      processes (default: memory only, or ``$HISEG_CACHE_DIR``); given with a segmenter object
      whose cache is memory-only, that cache is replaced by one with this disk store.
    - ``viewport_px`` (96): viewport side in pixels, an integer in [16, 1024] (67 mm at 0.7 mm
      pixels; the default cohort's phantoms are 96 px wide, so its viewports are mostly inside
      the scan; 1024 is the largest input side of the SAM family).
    - ``detection_sd_mm`` (3.0): SD per axis of the detection point's error, mm, in (0, 100].
    - ``pan_step_px`` (8): grid the viewport centre snaps to, an integer in [1, viewport_px].
    - ``window`` (``(-600, 1500)``): display window ``(level, width)`` HU for the image and the
      model; ``|level| <= 100000`` and width in [1, 100000] (NaN, infinity or a zero width would
      make NaN pixels).
    - ``time_penalty`` (0.0): lambda, reward lost per simulated second, in [0, 1000].
    - ``time_model``: ``None`` or a :class:`~hiseg_sim.timing.TimeModel` (default literature values).
    - ``mask_feedback`` (True): feed the previous low-res logits back with clicks; a ``bool`` (or 0 / 1).
    - ``render_mode`` (None or ``"rgb_array"``), ``render_gt`` (False: draw the ground-truth
      outline, for people watching only; a ``bool``), ``render_scale`` (4: an integer in [1, 16]
      with ``viewport_px * render_scale <= 4096``, the side of a frame).

    ## Version History

    - v0: first version.
    """

    three_d = False
    env_id = "hiseg_sim/NoduleSeg2D-v0"

    def __init__(
        self,
        cases=None,
        segmenter="litemedsam",
        cache_dir=None,
        viewport_px: int = 96,
        detection_sd_mm: float = 3.0,
        pan_step_px: int = 8,
        window=None,
        time_penalty: float = 0.0,
        time_model=None,
        mask_feedback: bool = True,
        render_mode: str | None = None,
        render_gt: bool = False,
        render_scale: int = 4,
    ):
        super().__init__(
            cases=cases,
            segmenter=segmenter,
            cache_dir=cache_dir,
            viewport_px=viewport_px,
            detection_sd_mm=detection_sd_mm,
            pan_step_px=pan_step_px,
            window=window,
            time_penalty=time_penalty,
            time_model=time_model,
            mask_feedback=mask_feedback,
            render_mode=render_mode,
            render_gt=render_gt,
            render_scale=render_scale,
            max_slices=1,
        )
