"""``hiseg_sim/NoduleSeg3D-v0``: outline a whole nodule slice by slice, with propagation between slices."""

from __future__ import annotations

from hiseg_sim.env.core import NoduleSegBase

__all__ = ["NoduleSeg3DEnv"]


class NoduleSeg3DEnv(NoduleSegBase):
    """Outline a whole lung nodule in 3-D by prompting a Segment Anything model slice by slice.

    ## Description

    The 3-D counterpart of :class:`~hiseg_sim.env.nodule2d.NoduleSeg2DEnv`. The person scrolls
    through a slab of up to ``max_slices`` consecutive slices around the nodule, all seen through
    the same square viewport (``viewport_px`` pixels, native spacing, centred on a noisy detection
    point; see :mod:`hiseg_sim.env.viewport`), prompts a 2-D segmenter on any slice, and can
    *propagate* the mask of the slice in view to a neighbouring slice: the mask's bounding box
    (grown by ``propagate_margin_px``) becomes that slice's box prompt and its low-resolution
    logits its mask prompt, as the volume tools of micro-sam and MedSAM2 do. The episode starts on
    the key slice (largest ground-truth area, :attr:`Case.key_slice`) moved by the detection
    noise along z (SD ``detection_sd_mm``, rounded to slices, kept within the slices holding
    ground truth). The mask is scored in 3-D against the whole case. A slice is encoded when it is
    first prompted (the start slice at reset), once per process thanks to the embedding cache and
    across processes thanks to its file lock.

    ## Action Space

    ``MultiDiscrete([9, W, H, W, H])``: ``[kind, x, y, x2, y2]``, ``(x, y)`` viewport pixels.

    ====  ==========================================  ==========================================
    kind  typed action                                effect
    ====  ==========================================  ==========================================
    0     ``PointAction(x, y, positive=True)``        positive click on the slice in view
    1     ``PointAction(x, y, positive=False)``       negative click on the slice in view
    2     ``BoxAction(x, y, x2, y2)``                 box on the slice in view
    3     ``Undo()``                                  take back the last prompt on this slice
    4     ``Accept()``                                accept the 3-D mask; ends the episode
    5     ``NextSlice()``                             view slice z + 1
    6     ``PrevSlice()``                             view slice z - 1
    7     ``Propagate(+1)``                           mask of z → box + mask prompt on z + 1; view z + 1
    8     ``Propagate(-1)``                           mask of z → box + mask prompt on z - 1; view z - 1
    ====  ==========================================  ==========================================

    Each slice keeps its own prompts and its own undo stack; a propagation pushes onto the
    target slice's stack (replacing what was shown there until undone). Clicks and boxes
    combine as in the 2-D env.

    Bad actions (code in ``info["invalid_action"]``, never an exception): ``"edge_point"``
    (executed), ``"reversed_box"`` (sorted, executed), ``"zero_area_box"`` (no-op),
    ``"nothing_to_undo"`` (no-op), ``"nothing_to_accept"`` (accept when no slice holds a prompt:
    no-op, the episode goes on), ``"no_slice_there"`` (next/previous/propagate past the slab:
    no-op), ``"nothing_to_propagate"`` (propagate from a slice with no or an empty mask: no-op),
    ``"prompt_rejected"`` (the segmenter raised ``PromptError``: no-op). An action outside the
    space raises :class:`~hiseg_sim.env.actions.InvalidActionError` (the step is not taken); a typed
    action with a field of the wrong type raises :class:`~hiseg_sim.env.actions.ActionTypeError`
    when made.

    ## Observation Space

    ``Dict`` with no ground truth and nothing derived from it:

    - ``"image"``, ``"mask"``, ``"prompts"``, ``"iou_pred"``, ``"step"``, ``"seconds"``: as in
      the 2-D env, for the slice in view.
    - ``"slice"``: ``Discrete(max_slices)``: index of the slice in view within the slab.
    - ``"slice_has_mask"``: ``MultiBinary(max_slices)``: 1 where a slice holds a non-empty mask.
    - ``"slice_in_slab"``: ``MultiBinary(max_slices)``: 1 for the slab's slices (the rest is padding).

    ## Rewards

    ``reward = (3-D Dice after - 3-D Dice before) - time_penalty * seconds``. The 3-D Dice
    counts every ground-truth voxel of the case (outside the slab or the viewport: missed) and is
    updated from per-slice overlap counts, so a step costs one slice, not a volume.

    ## Starting State

    A case drawn with ``np_random`` (or ``options["case_id"]`` / ``options["case_index"]``), the
    viewport and the start slice drawn as described (or ``options["viewport"]`` and
    ``options["start_slice"]``, a volume index, to replay), no prompt anywhere, Dice 0.
    ``options["time_model"]`` charges this episode with another :class:`~hiseg_sim.timing.TimeModel`.

    The options are checked as in the 2-D env (same keys, same errors), except that
    ``options["viewport"]`` may hold ``1 <= n_slices <= min(max_slices, Z)`` slices anywhere in
    the volume (``0 <= z0``, ``z0 + n_slices <= Z``) and ``options["start_slice"]`` is any volume
    index inside that slab, ``[z0, z0 + n_slices)``.

    ## Episode End

    Terminates on a valid ``Accept``; truncated by ``TimeLimit`` after ``max_episode_steps``
    (200 at registration). ``step`` after the end raises :class:`~hiseg_sim.env.core.ResetNeeded`.

    ## Information

    The keys of the 2-D env: ``"dice"`` and ``"iou"`` (3-D, against the whole case),
    ``"seconds"``, ``"seconds_total"``, ``"n_prompts"`` (clicks, boxes and propagations decoded,
    undone ones included), ``"iou_pred"`` (of the slice in view), ``"invalid_action"``; and

    - ``"per_slice_dice"``: ``float64`` ``(max_slices,)``: Dice of each slab slice against the
      whole ground-truth slice (1.0 where both are empty, :mod:`hiseg_sim.metrics`' policy); -1
      past the slab (not NaN, so equal infos compare equal).
    - ``"slice"`` (int): index of the slice in view within the slab.

    ``reset`` adds ``"case_id"`` and ``"viewport"`` (``z0`` is the slab's first volume slice).

    ## Arguments

    Those of the 2-D env, with the same bounds and errors, plus:

    - ``max_slices`` (64): slab length and size of the slice entries of the observation (80 mm
      at 1.25 mm slices; LIDC nodules are at most 30 mm), an integer in [1, 512].
    - ``propagate_margin_px`` (2): pixels added around the mask's bounding box when propagating,
      an integer in [0, viewport_px].

    ## Version History

    - v0: first version.
    """

    three_d = True
    env_id = "hiseg_sim/NoduleSeg3D-v0"

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
        max_slices: int = 64,
        propagate_margin_px: int = 2,
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
            max_slices=max_slices,
            propagate_margin_px=propagate_margin_px,
        )
