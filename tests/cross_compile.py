"""Compile the pack's Triton kernels for GPUs this machine does not have, and read what a launch needs.

`triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32))` runs the whole
CUDA pipeline (ptxas ships with triton) on a CPU-only machine; `.metadata.shared` is the shared memory the launch
asks for on that target. The signatures below give each kernel argument the type and the 16-divisibility hint
Triton's JIT gives it at a real Wan-shaped launch (pointers and strides divisible by 16; the runtime ints in a
kernel's `do_not_specialize` get none), because those hints decide whether loads are pipelined, and so how much
shared memory the pipeline buffers take.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# opt-in shared memory per block (bytes) of each target (ANCHORS.md; sm_100 as sm_90)
TARGET_LIMITS = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


@dataclass(frozen=True)
class Launch:
    """One compile: kernel, argument types, constexprs, warps, stages; `runtime` = the do_not_specialize ints."""

    fn: object
    pointers: dict  # argument name -> element type ("fp16", "i32", ...)
    floats: tuple
    runtime: tuple
    constexprs: dict
    warps: int
    stages: int

    def describe(self) -> str:
        consts = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()))
        return f"{self.fn.__name__}[{consts}] {self.warps}w/{self.stages}s"


def source(launch: Launch) -> ASTSource:
    sig, attrs = {}, {}
    for i, name in enumerate(launch.fn.arg_names):
        if name in launch.constexprs:
            sig[name] = "constexpr"
        elif name in launch.pointers:
            sig[name] = f"*{launch.pointers[name]}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in launch.floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name not in launch.runtime:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(launch.fn, sig, launch.constexprs, attrs)


def compile_for(launch: Launch, cc: int):
    """The launch compiled for compute capability `cc` (e.g. 89): Triton's CompiledKernel (asm, metadata)."""
    return triton.compile(source(launch), target=GPUTarget("cuda", cc, 32),
                          options={"num_warps": launch.warps, "num_stages": launch.stages})


def shared_memory(launch: Launch, cc: int) -> int:
    """Bytes of shared memory the launch asks for on compute capability `cc` (e.g. 89)."""
    return int(compile_for(launch, cc).metadata.shared)


def fused_launch(config: tuple[int, int, int, int], block: int, tma: bool, has_lut: bool, has_comp: bool,
                 has_linear: bool, dtype: str = "fp16", precision: str = "fp16", return_lse: bool = False) -> Launch:
    """The fused attention kernel at one config (BLOCK_M, BLOCK_N, warps, stages) and call kind, head_dim 128.

    precision "int8-qk": Q and K int8 with fp32 scales QS, KS (spec §8); "fp8": also V e4m3 with its fp32 scale VS;
    else QS, KS and VS are None, as the launcher passes them (Triton makes a None argument a constexpr, so it is not
    a kernel parameter)."""
    from comfyui_sparseflow.kernels import fused
    from comfyui_sparseflow.sparseflow.plan import PRECISIONS

    bm, bn, warps, stages = config
    int8, fp8 = precision in ("int8-qk", "fp8"), precision == "fp8"
    ptrs = {n: dtype for n in ("Q", "K", "V", "Out", "BKM", "BVM", "SKM", "SVM")}
    ptrs["LSE"] = "fp32"  # without return_lse the launcher passes a 1-element fp32 stand-in
    ptrs.update({n: "i32" for n in ("LUT", "ROUTES", "WINDOW", "TOPK", "HEAD_ORDER", "ANCHORS", "SEG_FRAME",
                                    "SEG_BLOCK", "FRAME_FIRST")}, SEG_LOG2N="fp32", CB="fp32")
    if int8:
        ptrs.update(Q="i8", K="i8", QS="fp32", KS="fp32")
    if fp8:
        ptrs.update(V="fp8e4nv", VS="fp32")
    consts = dict(HEAD_DIM=128, BLOCK=block, BLOCK_M=bm, BLOCK_N=bn, UPCAST=False, TMA=tma, HAS_LUT=has_lut,
                  HAS_COMP=has_comp, HAS_LINEAR=has_linear, PRECISION=PRECISIONS.index(precision),
                  RETURN_LSE=return_lse)
    if not int8:
        consts.update(QS=None, KS=None)
    if not fp8:
        consts.update(VS=None)
    return Launch(fused._jit_kernel, ptrs, ("qk_scale",), tuple(fused._RUNTIME_INTS), consts, warps, stages)


def pooled_mean_launch(span: int) -> Launch:
    """The pre-pass's block / segment means (kernels/prepass.py), as `pooled_means` launches it."""
    from comfyui_sparseflow.kernels import prepass

    ptrs = {"K": "fp16", "V": "fp16", "KM": "fp16", "VM": "fp16", "STARTS": "i32", "STOPS": "i32",
            "HEADS_SEL": "i32"}
    return Launch(prepass._pooled_mean_kernel, ptrs, (), ("NP", "BATCH", "HEADS"),
                  dict(SPAN=span, HEAD_DIM=128), 4, 3)


def comp_bias_launch(block: int) -> Launch:
    """The compensation bias rows (kernels/prepass.py `compensation_bias`), as it launches them."""
    from comfyui_sparseflow.kernels import prepass

    ptrs = {"CB": "fp32", "HEADS_SEL": "i32", "ROUTES": "i32", "WINDOW": "i32", "ANCHORS": "i32"}
    return Launch(prepass._comp_bias_kernel, ptrs, (), ("L", "P", "T", "F", "N", "LUT_ONLY"),
                  dict(BLOCK=block, BLOCK_J=128), 4, 3)


def quantize_launch(block: int) -> Launch:
    """The int8-qk pre-pass (kernels/quant.py), as `quantize_qk` launches it for head_dim 128."""
    from comfyui_sparseflow.kernels import quant

    ptrs = {"Q": "fp16", "K": "fp16", "KMEAN": "fp32", "Q8": "i8", "K8": "i8", "QS": "fp32", "KS": "fp32"}
    consts = dict(BLOCK=block, HEAD_DIM=128, WITH_V=False, EXACT=False, V=None, VSCALE=None, V8=None)
    return Launch(quant._quantize_kernel, ptrs, (), ("L", "N", "HEADS", "stride_vb", "stride_vh", "stride_vl"),
                  consts, quant.PREPASS_LAUNCH.quantize_warps(block), 3)


def k_mean_launch() -> Launch:
    """The k-mean pass before the quantize pre-pass (kernels/quant.py `k_mean`), head_dim 128."""
    from comfyui_sparseflow.kernels import quant

    shape = quant.PREPASS_LAUNCH
    return Launch(quant._k_sum_kernel, {"K": "fp16", "KSUM": "fp32"}, (), ("L", "HEADS", "SPLITS"),
                  dict(SPAN=shape.sum_span, BLOCK_L=shape.sum_rows, HEAD_DIM=128), shape.sum_warps, 3)


def quantize_fp8_launch(block: int) -> Launch:
    """The fp8 pre-pass (kernels/fp8_prepass.py: kernels/quant.py's kernel with v), as `quantize_qkv` launches it
    for head_dim 128."""
    from comfyui_sparseflow.kernels import quant

    ptrs = {"Q": "fp16", "K": "fp16", "V": "fp16", "KMEAN": "fp32", "VSCALE": "fp32", "Q8": "i8", "K8": "i8",
            "V8": "fp8e4nv", "QS": "fp32", "KS": "fp32"}
    return Launch(quant._quantize_kernel, ptrs, (), ("L", "N", "HEADS"), dict(BLOCK=block, HEAD_DIM=128, WITH_V=True,
                                                                 EXACT=False),
                  8 if block == 128 else 4, 3)


def norm_rope_launch(channels: int) -> Launch:
    """The QK prologue (kernels/norm_rope.py) at model dim `channels`, with the launcher's own tile shape."""
    from comfyui_sparseflow.kernels import norm_rope

    block_t, block_c, warps = norm_rope.launch_shape(channels)
    ptrs = {"q_ptr": "fp16", "k_ptr": "fp16", "wq_ptr": "fp16", "wk_ptr": "fp16", "f_ptr": "fp32",
            "oq_ptr": "fp16", "ok_ptr": "fp16"}
    consts = dict(C=channels, HALF_D=64, F_BATCHED=False, PER_HEAD=True, BLOCK_T=block_t, BLOCK_C=block_c)
    return Launch(norm_rope._norm_rope_kernel, ptrs, ("eps",), ("rows", "L"), consts, warps, 3)


def add_norm_launch(channels: int, has_y: bool, has_gate: bool, norm: bool, affine: bool, modulate: bool) -> Launch:
    """The block add + LayerNorm + modulation (kernels/residual_norm.py), with the launcher's own tile shape."""
    from comfyui_sparseflow.kernels import residual_norm

    block_t, block_c, warps = residual_norm.launch_shape(channels)
    ptrs = {n: "fp16" for n in ("x_ptr", "y_ptr", "g_ptr", "w_ptr", "b_ptr", "sh_ptr", "sc_ptr", "s_ptr", "n_ptr")}
    consts = dict(C=channels, HAS_Y=has_y, HAS_GATE=has_gate, NORM=norm, AFFINE=affine, MODULATE=modulate,
                  BLOCK_T=block_t, BLOCK_C=block_c)
    return Launch(residual_norm._add_norm_kernel, ptrs, ("eps",), ("rows", "L"), consts, warps, 3)


BUILDERS = {"fused": fused_launch, "pooled_mean": pooled_mean_launch, "comp_bias": comp_bias_launch,
            "quantize": quantize_launch, "quantize_fp8": quantize_fp8_launch,
            "k_mean": k_mean_launch, "norm_rope": norm_rope_launch,
            "add_norm": add_norm_launch}


def _job_launch(job: tuple) -> tuple[Launch, int]:
    """(launch, cc) of a pool job = (builder name, builder args, cc), in a fresh (spawned) process without
    TRITON_INTERPRET, so the kernels are jitted, not interpreted."""
    os.environ.pop("TRITON_INTERPRET", None)
    from pack_package import load_pack_package

    load_pack_package()
    name, args, cc = job
    return BUILDERS[name](*args), cc


def shared_memory_job(job: tuple) -> int:
    """Worker of a process pool: job = (builder name, builder args, cc) -> shared memory in bytes."""
    return shared_memory(*_job_launch(job))


def ptx_job(job: tuple) -> str:
    """As `shared_memory_job`, returning the launch's PTX for that target."""
    return compile_for(*_job_launch(job)).asm["ptx"]


def fp8_mma_job(job: tuple) -> tuple[int, list[str]]:
    """As `shared_memory_job`, also naming the e4m3 MMAs in the compiled PTX (sm_89/sm_120 `mma.sync ... e4m3`,
    sm_90 `wgmma ... e4m3`, sm_100 `tcgen05.mma ... kind::f8f6f4`), de-duplicated."""
    import re

    compiled = compile_for(*_job_launch(job))
    mmas = re.findall(r"(?:wgmma\.mma_async|mma\.sync|tcgen05\.mma)[\w.:]*", compiled.asm["ptx"])
    return int(compiled.metadata.shared), sorted({m for m in mmas if "e4m3" in m or "f8f6f4" in m})
