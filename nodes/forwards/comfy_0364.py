"""ComfyUI 0.3.64's Wan forwards (comfy/ldm/wan/model.py @a125cd84), with SparseFlow's fused passes.

Self-attention: q and k (made by the fused prologue), then `optimized_attention(q, k, v(x), heads, transformer_options)`
with plain tensors, then `o`. Block: norm1 + modulation -> self_attn -> gated add + norm3 -> cross_attn -> add + norm2
+ modulation -> FFN -> gated add; no block-level patches. Its forward_orig gives blocks `context_img_len` =
the CLIP token count whenever `clip_fea` is given.
"""

from __future__ import annotations

__all__ = ["NAME", "attend", "block_body", "context_img_len"]

NAME = "ComfyUI 0.3.64"


def context_img_len(dm, clip_fea) -> int | None:
    return None if clip_fea is None else int(clip_fea.shape[-2])


def attend(wan, module, proj, to):
    """The self-attention after its input: q and k (the QK prologue), v, the attention call, the output projection.
    `proj` (nodes/prologue.py Projections) makes q, k and v."""
    q, k = proj.qk()
    out = wan.optimized_attention(q, k, proj.v(), heads=module.num_heads, transformer_options=to)
    del q, k
    return module.o(out)


def block_body(block, x, ee, freqs, context, context_img_len, to, ops):
    """The block between its modules, with `ops` (nodes/fused_block.py BlockOps) for the adds and norms."""
    x, y = ops.attentions(block, x, ee, freqs, context, context_img_len, to)
    x, h = ops.add_norm2(x, y, ee[3], ee[4])
    del y
    return ops.feed_forward(block, x, h, ee[5], own_stream=True)
