"""What a SparseFlow patch decided at patch time: the frozen `PatchConfig` kept in the model's options.

`transformer_options["sparseflow"]` holds a `PatchConfig` and nothing mutable, so sharing it is harmless: newest
ComfyUI's `ModelPatcher.clone()` copies dicts and lists of `model_options` but shares the objects in them
(COMFY_NOTES §9). Everything that changes while sampling lives in a per-run state made by the OUTER_SAMPLE
wrapper (nodes/run.py), as core EasyCache makes its holder's per-run copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sparseflow.ffn import PIECE_HIDDEN_PER_STREAM
from ..sparseflow.routing import RoutingMap
from ..sparseflow.schedule import Schedule, StepParams

__all__ = ["COMFY_BACKEND", "HEAD_DIMS", "SPARSEFLOW_KEY", "PatchConfig"]

SPARSEFLOW_KEY = "sparseflow"  # the config in transformer_options; the key of every wrapper and callback
HEAD_DIMS = (64, 128)
COMFY_BACKEND = "comfyui"  # telemetry name of ComfyUI's own attention (dense steps / all-dense layers)


@dataclass(frozen=True)
class PatchConfig:
    """Everything a patch decided at patch time (immutable, shared by clones)."""

    schedule: Schedule
    routing: RoutingMap
    layers: int
    heads: int
    head_dim: int
    family: str
    model_type: str
    anchors: tuple[int, ...] = (0,)
    linear_kind: str = "pooled"
    backend: str = "auto"  # "auto", "triton" or "reference" (sparseflow.ops)
    block: int = 128
    window: int = -1  # -1 = the schedule's window
    sigma_max: float = 1.0
    node_id: str | None = None
    fuse_qk_norm_rope: bool = True
    fuse_block_norms: bool = True
    precision: str = "fp16"  # Q·K precision of SparseFlow's attention (sparseflow.plan.PRECISIONS, spec §8)
    precision_auto: bool = False  # `precision` was resolved from the node's "auto" (nodes/patch.py resolve_precision)
    ffn_in_pieces: bool = True  # fused blocks run a large FFN in token pieces (nodes/fused_block.py feed_forward)
    # the largest FFN piece's hidden tensor, in streams (sparseflow.ffn.token_chunks)
    ffn_piece_hidden: float = PIECE_HIDDEN_PER_STREAM

    def __deepcopy__(self, memo: dict) -> PatchConfig:
        return self  # immutable: ComfyUI 0.3.64's clone() deep-copies model_options; one config serves every clone

    def window_at(self, params: StepParams) -> int:
        """The temporal window a step applies: the node's `window` when set (>= 0), else the schedule's."""
        return params.window if self.window < 0 else self.window
