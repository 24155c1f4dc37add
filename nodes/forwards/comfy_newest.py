"""Newest ComfyUI's Wan forwards (0.38.x, comfy/ldm/wan/model.py @0c9a69ae), with SparseFlow's fused passes.

Self-attention: q and k (made by the fused prologue in place of RMSNorm + comfy_kitchen's `apply_rope1`), kept for
`attn1_patch` when one is set, then q/k/v wrapped in `AttentionTensorContainer`s (the backend takes them and frees
them early) and `optimized_attention(..., preferred_attention=self.comfy_attention, transformer_options)`, then each
`attn1_patch` on the output, then `o`. Block: as 0.3.64's, with each `attn2_patch` run on the stream after the
cross-attention add (so that add and norm2 are then two passes); norm1/norm2 + modulation by SparseFlow's kernel in
place of `modulate` (comfy_kitchen's `adaln` on large CUDA inputs); the FFN's GELU in its first GEMM where
`sparseflow.ffn` allows, else newest's own `WanFeedForward` (`linear_input_act`). Its forward_orig gives blocks
`context_img_len` only when the model has an image embedding.
"""

from __future__ import annotations

__all__ = ["NAME", "attend", "block_body", "context_img_len"]

NAME = "ComfyUI newest (0.38)"


def context_img_len(dm, clip_fea) -> int | None:
    return None if clip_fea is None or getattr(dm, "img_emb", None) is None else int(clip_fea.shape[-2])


def attend(wan, module, proj, to):
    """The self-attention after its input: q and k (the QK prologue), containers, v, the attention call,
    attn1_patch, the output projection. `proj` (nodes/prologue.py Projections) makes q, k and v."""
    patches = to.get("patches", {})
    b, s = proj.shape[:2]
    q, k = proj.qk()
    if patches.get("attn1_patch"):
        q_patch, k_patch = (t.view(b, s, module.num_heads, module.head_dim) for t in (q, k))
    container = wan.AttentionTensorContainer
    q, k = container(q), container(k)  # the containers hold the only references: the backend frees them
    out = wan.optimized_attention(q, k, container(proj.v()), heads=module.num_heads,
                                  preferred_attention=getattr(module, "comfy_attention", None),
                                  transformer_options=to)
    if "attn1_patch" in patches:
        for p in patches["attn1_patch"]:
            out = p({"x": out, "q": q_patch, "k": k_patch, "transformer_options": to})
    return module.o(out)


def block_body(block, x, ee, freqs, context, context_img_len, to, ops):
    """The block between its modules, with `ops` (nodes/fused_block.py BlockOps) for the adds and norms."""
    patches = to.get("patches", {})
    x, y = ops.attentions(block, x, ee, freqs, context, context_img_len, to)
    if "attn2_patch" in patches:  # the patches see the stream after the add, before norm2
        x = ops.add(x, y)
        del y
        for p in patches["attn2_patch"]:
            x = p({"x": x, "transformer_options": to})
        h = ops.norm2(x, ee[3], ee[4])
        return ops.feed_forward(block, x, h, ee[5], own_stream=False)  # x is the patches' tensor
    x, h = ops.add_norm2(x, y, ee[3], ee[4])
    del y
    return ops.feed_forward(block, x, h, ee[5], own_stream=True)
