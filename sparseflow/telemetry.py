"""Per-run telemetry: what each sampling step actually applied, and the one-line summary of a run.

After EasyCache's OUTER_SAMPLE summary (ComfyUI `comfy_extras/nodes_easycache.py`): the nodes record every
patched attention call here and print one line when sampling ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FUSED", "REFERENCE", "CallRecord", "RunTelemetry"]

FUSED = "fused"  # a fused pass ran its kernel
REFERENCE = "reference"  # a fused pass ran SparseFlow's PyTorch reference of it (same math, no kernel)


@dataclass(frozen=True)
class CallRecord:
    """One patched self-attention call."""

    step: int
    progress: float
    layer: int
    window: int
    topk: int
    dense_step: bool
    routes: tuple[int, ...]
    pairs: int  # exact (query block, key block) pairs summed over heads and batch (density, docs/spec.md §6)
    dense_pairs: int  # the same call fully dense
    backend: str
    cost: int | None = None  # pairs plus the pooled reads (spec §6: the work done); None: equal to pairs


@dataclass
class RunTelemetry:
    """Records of one sampling run; `reset()` between runs."""

    calls: list[CallRecord] = field(default_factory=list)
    passthrough: dict[str, int] = field(default_factory=dict)
    prologue: dict[str, int] = field(default_factory=dict)  # FUSED, REFERENCE or why ComfyUI's QK-norm + RoPE ran
    block_norms: dict[str, int] = field(default_factory=dict)  # FUSED, REFERENCE or why a block's own passes ran
    ffn_pieces: dict[int, int] = field(default_factory=dict)  # pieces per block call -> block calls (fused blocks)
    forward: str = ""  # which ComfyUI Wan forward the fused passes mirror (or why none), said in the summary
    precision: str = "fp16"  # the patch's precision (spec §8), said in the summary when not fp16

    def reset(self) -> None:
        self.calls.clear()
        self.passthrough.clear()
        self.prologue.clear()
        self.block_norms.clear()
        self.ffn_pieces.clear()
        self.forward = ""

    def note_prologue(self, kind: str) -> None:
        self.prologue[kind] = self.prologue.get(kind, 0) + 1

    def note_block_norms(self, kind: str) -> None:
        self.block_norms[kind] = self.block_norms.get(kind, 0) + 1

    def note_ffn_pieces(self, pieces: int) -> None:
        self.ffn_pieces[pieces] = self.ffn_pieces.get(pieces, 0) + 1

    def record(self, rec: CallRecord) -> None:
        self.calls.append(rec)

    def note_passthrough(self, reason: str) -> None:
        self.passthrough[reason] = self.passthrough.get(reason, 0) + 1

    def steps(self) -> list[int]:
        return sorted({c.step for c in self.calls})

    def step_params(self) -> dict[int, tuple[int, int, bool]]:
        """step -> (window, topk, dense_step) as applied (first call of the step)."""
        out: dict[int, tuple[int, int, bool]] = {}
        for c in self.calls:
            out.setdefault(c.step, (c.window, c.topk, c.dense_step))
        return out

    def density_per_step(self) -> dict[int, float]:
        pairs: dict[int, list[int]] = {}
        for c in self.calls:
            acc = pairs.setdefault(c.step, [0, 0])
            acc[0] += c.pairs
            acc[1] += c.dense_pairs
        return {s: p / d if d else 1.0 for s, (p, d) in sorted(pairs.items())}

    def route_counts(self) -> dict[str, int]:
        """Heads per route over the distinct (layer, head) seen (last record per layer wins)."""
        last: dict[int, tuple[int, ...]] = {}
        for c in self.calls:
            if not c.dense_step:
                last[c.layer] = c.routes
        counts = {"dense": 0, "sparse": 0, "linear": 0}
        for routes in last.values():
            for r in routes:
                counts[("dense", "sparse", "linear")[r]] += 1
        return counts

    def flops_saved(self) -> float:
        """1 - (work done, pooled reads included) / (work of the same calls fully dense)."""
        done = sum(c.pairs if c.cost is None else c.cost for c in self.calls)
        full = sum(c.dense_pairs for c in self.calls)
        return 1.0 - done / full if full else 0.0

    def backends(self) -> list[str]:
        return sorted({c.backend for c in self.calls})

    def summary(self) -> str:
        if not self.calls:
            extra = f"; passed through: {self.passthrough}" if self.passthrough else ""
            return "SparseFlow: no self-attention call was patched in this run" + extra
        dens = " ".join(f"{d:.2f}" for d in self.density_per_step().values())
        counts = self.route_counts()
        text = (f"SparseFlow: {len(self.steps())} steps, density per step [{dens}], heads "
                f"sparse {counts['sparse']} / linear {counts['linear']} / dense {counts['dense']}, "
                f"est. attention FLOPs saved {100 * self.flops_saved():.0f}%, backend {'+'.join(self.backends())}")
        if self.precision != "fp16":  # all-dense calls stay on the dense path (spec §8)
            text += f", precision {self.precision} (sparse, linear and mixed calls)"
        if self.passthrough:
            text += "; passed to ComfyUI attention: " + ", ".join(f"{k} x{v}" for k, v in self.passthrough.items())
        for label, counts in (("QK-norm + RoPE", self.prologue), ("block adds + norms", self.block_norms)):
            if counts:
                text += f"; {label}: " + ", ".join(f"{_pass_kind(k)} x{v}" for k, v in counts.items())
        if self.forward and (self.prologue or self.block_norms):
            text += f" ({self.forward})"
        if self.ffn_pieces:  # the large FFNs that ran in token pieces (lower peak memory)
            text += "; FFN in token pieces: " + ", ".join(f"{n} per block x{c}" for n, c in self.ffn_pieces.items())
        return text


def _pass_kind(kind: str) -> str:
    if kind == FUSED:
        return "fused"
    if kind == REFERENCE:
        return "SparseFlow's PyTorch reference (no kernel)"
    return f"ComfyUI's own ({kind})"
