"""A clean dense clone of a model SparseFlow Patch has patched: what calibration measures against (issue 18).

Calibration needs ComfyUI's own dense attention. Fed the Patch node's output, it would otherwise sample with the
patch's override, block bodies, wrappers and fused forwards still in place. `dense_clone` clones the model and takes
every SparseFlow item off the clone, through the same ModelPatcher calls `apply_sparseflow` (nodes/patch.py) uses
to put them on, keeping anything another node installed (its override, its block replaces) as it was below
SparseFlow's.
"""

from __future__ import annotations

import logging

from .config import SPARSEFLOW_KEY, PatchConfig
from .override import OVERRIDE_KEY, unwrap_previous

__all__ = ["dense_clone", "is_patched"]

log = logging.getLogger("sparseflow.nodes")


def is_patched(model: object) -> bool:
    """Whether SparseFlow Patch's config is in the model's transformer_options."""
    to = getattr(model, "model_options", {}).get("transformer_options", {})
    return isinstance(to.get(SPARSEFLOW_KEY), PatchConfig)


def dense_clone(model, who: str):
    """A clone of `model` with no SparseFlow patch (the model itself is unchanged); logs once per call when one was
    taken off, naming `who` (the node) so the user knows what ran."""
    import comfy.patcher_extension as pe

    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    if not is_patched(m) and not getattr(to.get(OVERRIDE_KEY), "_sparseflow", False):
        return m
    to.pop(SPARSEFLOW_KEY, None)
    below = unwrap_previous(to.get(OVERRIDE_KEY))
    if below is None:
        to.pop(OVERRIDE_KEY, None)
    else:
        to[OVERRIDE_KEY] = below
    dit = to.get("patches_replace", {}).get("dit", {})
    for key in [k for k, fn in dit.items() if getattr(fn, "_sparseflow", False)]:
        previous = dit[key]
        while getattr(previous, "_sparseflow", False):
            previous = previous._sparseflow_previous
        if previous is None:
            del dit[key]
        else:
            dit[key] = previous
    for kind in (pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.DIFFUSION_MODEL):
        m.remove_wrappers_with_key(kind, SPARSEFLOW_KEY)
    for call_type in (pe.CallbacksMP.ON_PREPARE_STATE, pe.CallbacksMP.ON_CLEANUP):
        m.remove_callbacks_with_key(call_type, SPARSEFLOW_KEY)
    for key in [k for k, v in m.object_patches.items() if getattr(v, "_sparseflow", False)]:
        del m.object_patches[key]
    log.warning("%s: the model given is already patched by SparseFlow Patch; measuring against ComfyUI's dense "
                "attention on a clone without the patch (connect the unpatched model to silence this)", who)
    return m
