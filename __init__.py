"""SparseFlow for ComfyUI: faster Wan 2.1 / 2.2 sampling through sparse, linear and dense attention heads.

ComfyUI entry point. Importing this module does no work beyond naming the web folder; the node classes
are imported lazily by `comfy_entrypoint()` (the V3 registration path, COMFY_NOTES 6).
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import SparseFlowExtension

    return SparseFlowExtension()
