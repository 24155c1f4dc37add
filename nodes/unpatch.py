"""Taking SparseFlow Patch off a model: the dense run of Compare and what calibration measures against (issue 18).

Calibration and Compare's dense run need ComfyUI's own dense attention. Fed the Patch node's output, they would
otherwise sample with the patch's override, block bodies, wrappers and fused forwards still in place.
`remove_sparseflow` clones the model and takes every SparseFlow item off the clone, through the same ModelPatcher
calls `apply_sparseflow` (nodes/patch.py) uses to put them on, keeping anything another node installed (its
override, its block replaces) as it was below SparseFlow's.
"""

from __future__ import annotations

import logging

from .config import SPARSEFLOW_KEY, PatchConfig
from .override import OVERRIDE_KEY, unwrap_previous

__all__ = ["dense_clone", "is_patched", "remove_sparseflow"]

log = logging.getLogger("sparseflow.nodes")


def is_patched(model: object) -> bool:
    """Whether SparseFlow Patch's config is in the model's transformer_options."""
    to = getattr(model, "model_options", {}).get("transformer_options", {})
    return isinstance(to.get(SPARSEFLOW_KEY), PatchConfig)


def remove_sparseflow(model):
    """A clone of `model` with everything `apply_sparseflow` added taken out by its keys and markers: the config, the
    override (the one below it stays), the block replaces (another node's stay), the wrappers, the callbacks and the
    fused forward object patches. The dicts on the way are copied, so the model given is never changed."""
    import comfy.patcher_extension as pe

    m = model.clone()
    to = dict(m.model_options.get("transformer_options", {}))
    m.model_options["transformer_options"] = to
    to.pop(SPARSEFLOW_KEY, None)
    below = unwrap_previous(to.pop(OVERRIDE_KEY, None))
    if below is not None:
        to[OVERRIDE_KEY] = below
    replace = dict(to.get("patches_replace", {}))
    dit = dict(replace.get("dit", {}))
    for key, fn in list(dit.items()):
        while getattr(fn, "_sparseflow", False):
            fn = fn._sparseflow_previous
        if fn is None:
            del dit[key]
        else:
            dit[key] = fn
    if "dit" in replace:
        replace["dit"] = dit
        to["patches_replace"] = replace
    for kind in (pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.DIFFUSION_MODEL):
        m.remove_wrappers_with_key(kind, SPARSEFLOW_KEY)
    for call_type in (pe.CallbacksMP.ON_PREPARE_STATE, pe.CallbacksMP.ON_CLEANUP):
        m.remove_callbacks_with_key(call_type, SPARSEFLOW_KEY)
    for key in [k for k, v in m.object_patches.items() if getattr(v, "_sparseflow", False)]:
        del m.object_patches[key]
    return m


def dense_clone(model, who: str):
    """A clone of `model` with no SparseFlow patch (the model itself is unchanged); logs once per call when one was
    taken off, naming `who` (the node) so the user knows what ran."""
    to = getattr(model, "model_options", {}).get("transformer_options", {})
    if not is_patched(model) and not getattr(to.get(OVERRIDE_KEY), "_sparseflow", False):
        return model.clone()
    log.warning("%s: the model given is already patched by SparseFlow Patch; measuring against ComfyUI's dense "
                "attention on a clone without the patch (connect the unpatched model to silence this)", who)
    return remove_sparseflow(model)
