"""Triton kernels of SparseFlow attention: the per-call pre-pass and the fused forward launch.

Importing this package needs triton; `sparseflow.ops` imports it lazily and records why when it cannot.
"""

from .launch import fused_attention

__all__ = ["fused_attention"]
