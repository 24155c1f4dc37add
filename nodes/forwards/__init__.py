"""ComfyUI's Wan forwards, one module per supported version, and the behaviour check that picks one.

Each version module mirrors what that ComfyUI's `WanSelfAttention.forward` does after q and k (`attend`) and what its
`WanAttentionBlock.forward` does between its modules (`block_body`), with SparseFlow's fused passes in place of
ComfyUI's own; `probe.match_forwards` picks the module whose code does what the running ComfyUI does (STYLE §24).
"""

from . import comfy_0364, comfy_newest

__all__ = ["VERSIONS"]

VERSIONS = (comfy_newest, comfy_0364)  # tried in this order
