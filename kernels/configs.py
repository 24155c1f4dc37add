"""Launch configurations of the fused SparseFlow kernel, chosen per device from the shared memory it allows.

After Triton's 06-fused-attention tutorial (`configs` + `keep()`), with one list per tier of device: the tier is
the largest whose shared-memory budget the device's opt-in maximum per block covers (ANCHORS.md: sm_90/100
232448 B; A100 sm_80 166912 B; RTX 30/40/50 sm_86/89/120 101376 B). Every listed config of a tier fits that
budget when compiled for every target of the tier, for every call kind (top-k LUT, compensation, linear
heads): `tests/test_launch_targets.py` cross-compiles them for sm_80/86/89/90/100/120 in CI. At run time
`keep()` also compiles each candidate for the device at hand and drops one that asks for more shared memory
than the device allows (another Triton version can lay memory out differently), so a launch never asks for
more than the device has; when none fits, the launch raises `KernelLaunchError` with the sizes.

The hopper, blackwell and rtx50 tiers read K/V through tensor descriptors (TMA): sm_90, sm_100 and sm_120 have
the copy engine; A100 and RTX 30/40 cards are served by the pointer path. `$SPARSEFLOW_LAUNCH_TIER` (a tier name)
forces a tier's configs and descriptor choice on any device: on an H200 it measures what an RTX card's configs
give (a proxy), and the GPU tests run with it too. Under TRITON_INTERPRET=1 (CPU CI) one small fixed config runs
and nothing is tuned.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..sparseflow.inputs import KernelLaunchError
from ..sparseflow.plan import PrecisionChoice

__all__ = ["AUTOTUNE_KEY", "INTERPRET", "TIERS", "TIER_ENV", "TIER_NAMES", "DeviceLimits", "LaunchConfig",
           "Tier", "auto_precision", "device_limits", "interpret_config", "keep", "launch_configs",
           "tier_for", "use_descriptors"]

log = logging.getLogger("sparseflow.kernels")
_logged: set = set()

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TIER_ENV = "SPARSEFLOW_LAUNCH_TIER"
# TIER: the tier's index (a runtime int of the kernel, there only for this key: two devices of different tiers in
# one process tune apart); the flags are the call kind's constexprs
AUTOTUNE_KEY = ["L", "HEADS", "BATCH", "HEAD_DIM", "BLOCK", "TIER", "TMA", "HAS_LUT", "HAS_COMP", "HAS_LINEAR",
                "PRECISION"]


@dataclass(frozen=True)
class LaunchConfig:
    """One launch of the fused kernel: query rows and keys per tile, warps, software-pipeline stages.

    `with_lut=False`: not for calls with a top-k LUT (that path's second pipelined loop needs more memory).
    `with_int8=False`: not for precision int8-qk or fp8 (spec §8), where it compiles to more than its tier allows.
    `with_fp8_mixed=False`: not for precision fp8 calls that have compensated sparse heads and linear heads and no
    top-k LUT, the call kind that compiles largest at fp8 (tests/test_launch_targets_fp8.py).
    """

    block_m: int
    block_n: int
    warps: int
    stages: int
    with_lut: bool = True
    with_int8: bool = True
    with_fp8_mixed: bool = True

    def triton(self) -> triton.Config:
        return triton.Config({"BLOCK_M": self.block_m, "BLOCK_N": self.block_n}, num_warps=self.warps,
                             num_stages=self.stages)


@dataclass(frozen=True)
class Tier:
    """Devices whose opt-in shared memory per block is at least `shared_memory` bytes, and their configs."""

    name: str
    shared_memory: int
    majors: tuple[int, ...]  # compute capability majors it serves (empty: any)
    descriptors: bool  # K/V through tensor descriptors (needs the sm_90+ copy engine)
    block128: tuple[LaunchConfig, ...]
    block64: tuple[LaunchConfig, ...]
    fp8_descriptors: bool = True  # precision fp8 too (where `descriptors`); False: fp8 calls take pointer loads
    auto: str = "fp16"  # the Q·K precision the Patch node's precision "auto" takes on this tier (measured)


C = LaunchConfig
TIERS = (
    # H100/H200. 128/128/8/3 fastest on every Wan row (docs/performance.md, "GPUs users own"; history), fp8 included
    # since e4m3 v is token-contiguous (720fd4a), except for the mixed kind (245760 B on sm_90, triton 3.8 and 3.6);
    # fp8 calls read K/V through pointers: on the H200, 1.3B window 0, 1.804 ms vs 1.898 with descriptors
    # (128/64/8/3: 2.005 vs 2.119; bench/results/bench_h200_sweep_fp8_67a3401.md)
    Tier("hopper", 232448, (9,), True,
         (C(128, 128, 8, 3, with_fp8_mixed=False), C(128, 64, 8, 3)),
         (C(64, 64, 4, 3), C(64, 64, 4, 4)), fp8_descriptors=False),
    # B200 (sm_100): the same budget, but 128/128/8/3 compiles to 544 B over it there (tcgen05 MMA)
    Tier("blackwell", 232448, (10,), True,
         (C(128, 64, 8, 3), C(128, 128, 8, 2, with_lut=False)),
         (C(64, 64, 4, 3), C(64, 64, 4, 4))),
    # A100 (and sm_87): 128/128/8/3 takes exactly its 166912 B on sm_80. Slower candidates that fit (H200 sweep as
    # for the consumer tier): 128/64/8/4, 128/64/8/5, 64/128/4/2, 64/128/4/3, 64/128/8/2; at int8-qk 128/64/8/4
    # (148224 B) also slower (bench/results/bench_h200_sweep_int8_961fa01.md)
    Tier("a100", 166912, (), False,
         (C(128, 128, 8, 3), C(128, 64, 8, 3), C(128, 128, 8, 2, with_lut=False)),
         (C(64, 64, 4, 3), C(64, 64, 4, 2))),
    # RTX 50 and RTX PRO Blackwell (sm_120/121): 99 KiB as below, but with the copy engine: Triton compiles tensor
    # descriptors to TMA there (cp.async.bulk.tensor), within 99 KiB at these configs (98336-99840 B, triton 3.8).
    # fp8 calls take pointer loads, as on the hopper tier
    Tier("rtx50", 101376, (12,), True,
         (C(128, 64, 8, 3, with_fp8_mixed=False), C(128, 64, 8, 2), C(128, 128, 8, 2, with_lut=False, with_int8=False)),
         (C(64, 64, 4, 3), C(64, 64, 4, 2), C(64, 32, 4, 2)), fp8_descriptors=False),
    # RTX 30/40 (and L4/L40, A10): 99 KiB. 128x128 tiles fit only two stages and no LUT loop (and not the int8-qk
    # kernel: 114688 B on sm_120, triton 3.8). fp8 128/64/8/3 fits since e4m3 v is token-contiguous (720fd4a: 99840
    # B on sm_89), but for the mixed kind (114688 B on sm_89/120), and is the tier's fastest fp8 config on the H200
    # (1.995 ms, 1.3B window 0; 128/64/8/2 2.381).
    # Candidates that fit and were slower there (bench/results/bench_h200_sweep_67a3401.md): 128/32/8/3..5,
    # 64/64/4/3, 64/32/4/4
    # precision auto: int8-qk. On the H200 with these configs forced, whole op: Wan 1.3B windows 0 / 1 / 2 8.24x /
    # 4.76x / 3.38x SDPA vs fp16 7.79x / 4.19x / 2.97x, 14B window 0 10.10x vs 8.52x
    # (bench/results/bench_h200_tiers_prec_bc1cdeb.md; int8 K tiles take half the bytes through the pointer path;
    # 1.3B window 0 8.40x since the quantize pass's split, bench_h200_tiers_int8_961fa01.md);
    # on the cards themselves more: GeForce Ada/Ampere run fp16 MMA with fp32 accumulation at a quarter of int8's
    # rate (RTX 4090: 165 TFLOPS vs 660 TOPS, NVIDIA's Ada whitepaper). Quality: docs/fidelity.md (within 0.01 dB of
    # fp16 on the trained model)
    Tier("consumer", 101376, (), False,
         (C(128, 64, 8, 3, with_fp8_mixed=False), C(128, 64, 8, 2), C(128, 128, 8, 2, with_lut=False, with_int8=False)),
         (C(64, 64, 4, 3), C(64, 64, 4, 2), C(64, 32, 4, 2)), auto="int8-qk"),
    # 64 KiB parts (sm_75 T4 and the like)
    Tier("small", 0, (), False,
         (C(128, 32, 8, 2), C(64, 32, 4, 2)),
         (C(64, 32, 4, 2),)),
)
TIER_NAMES = tuple(t.name for t in TIERS)


@dataclass(frozen=True)
class DeviceLimits:
    """What a device allows a kernel launch: compute capability and opt-in shared memory per block (bytes)."""

    capability: tuple[int, int]
    shared_memory: int
    name: str = ""

    def describe(self) -> str:
        return f"{self.name or 'device'} (sm_{self.capability[0]}{self.capability[1]}, " \
               f"{self.shared_memory // 1024} KiB shared memory per block)"


def device_limits(device: torch.device) -> DeviceLimits:
    """The limits of a CUDA device, read from its properties."""
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or getattr(props, "shared_memory_per_block", 0)
    return DeviceLimits((props.major, props.minor), int(smem), props.name)


def tier_for(limits: DeviceLimits) -> Tier:
    """The tier serving a device: `$SPARSEFLOW_LAUNCH_TIER` when set, else the largest whose budget it covers."""
    forced = os.environ.get(TIER_ENV)
    if forced:
        if forced not in TIER_NAMES:
            raise ValueError(f"${TIER_ENV} must be one of {TIER_NAMES}, got {forced!r}")
        return TIERS[TIER_NAMES.index(forced)]
    for tier in TIERS:  # the last tier takes any device: keep() then says what its configs need
        if limits.shared_memory >= tier.shared_memory and (not tier.majors or limits.capability[0] in tier.majors):
            return tier
    return TIERS[-1]


def auto_precision(limits: DeviceLimits) -> PrecisionChoice:
    """The precision "auto" resolves to on a device: its tier's `auto` (int8-qk where it measured faster), fp16 where
    Triton has no int8 MMA (below sm_80)."""
    tier = tier_for(limits)
    if tier.auto != "fp16" and limits.capability < (8, 0):
        return PrecisionChoice("fp16", f"{limits.describe()} has no int8 tensor-core path in Triton (sm_80+)")
    return PrecisionChoice(tier.auto, f"launch tier {tier.name} on {limits.describe()}")


def use_descriptors(limits: DeviceLimits, tier: Tier, fp8: bool = False) -> bool:
    """K/V through tensor descriptors: the tier takes them (at precision fp8: `fp8_descriptors` too) and the device
    has the sm_90+ copy engine."""
    return tier.descriptors and (tier.fp8_descriptors or not fp8) and limits.capability[0] >= 9 \
        and hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")


def launch_configs(tier: Tier, block: int, has_lut: bool, int8: bool = False,
                   fp8_mixed: bool = False) -> list[LaunchConfig]:
    """The tier's configs for a spec block (tiles dividing it), call kind and precision (int8: int8-qk or fp8, whose
    Q·K is int8; fp8_mixed: a precision fp8 call with compensation and linear heads and no top-k LUT)."""
    listed = tier.block128 if block == 128 else tier.block64
    return [c for c in listed if block % c.block_m == 0 and block % c.block_n == 0 and (c.with_lut or not has_lut)
            and (c.with_int8 or not int8) and (c.with_fp8_mixed or not fp8_mixed)]


def interpret_config() -> dict:
    """The one configuration used under TRITON_INTERPRET=1: small tiles keep the CPU emulation quick."""
    return {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}


def keep(configs, named_args, **kwargs) -> list:
    """Autotune prune: the device tier's configs for this spec block and call kind, minus any that this Triton
    compiles to more shared memory than the device allows. Raises KernelLaunchError when none fits."""
    from .fused import _jit_kernel  # the kernel this prunes for; imported here, after both modules exist

    kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}  # the autotuner's launch kwargs
    args = {**named_args, **kwargs}
    limits = device_limits(args["Q"].device)
    tier = TIERS[args["TIER"]]
    wanted = {(c.block_m, c.block_n, c.warps, c.stages)
              for c in launch_configs(tier, args["BLOCK"], bool(args["HAS_LUT"]), bool(args["PRECISION"]),
                                      args["PRECISION"] == 2 and not args["HAS_LUT"] and bool(args["HAS_COMP"])
                                      and bool(args["HAS_LINEAR"]))}
    fits, needs = [], []
    for c in configs:
        key = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
        if key not in wanted:
            continue
        compiled = _jit_kernel.warmup(**named_args, **kwargs, **c.kwargs, num_warps=c.num_warps,
                                      num_stages=c.num_stages, grid=(1,))
        shared = int(compiled.metadata.shared)
        if shared <= limits.shared_memory:
            fits.append(c)
        else:
            needs.append((shared, key))
            _log_once(("too big", key, limits), "fused kernel config %s needs %d B shared memory with triton %s; "
                      "%s allows %d B: skipped", "/".join(map(str, key)), shared, triton.__version__,
                      limits.name, limits.shared_memory)
    if not fits:
        least = min(needs)[0] if needs else 0
        raise KernelLaunchError(f"the fused kernel cannot launch on {limits.describe()}: its smallest config for "
                                f"this call needs {least / 1024:.0f} KiB shared memory, the device allows "
                                f"{limits.shared_memory / 1024:.0f} KiB (tier {tier.name}, triton "
                                f"{triton.__version__})")
    return fits


def all_configs() -> list:
    """Every tier's configs once, as triton.Config (the autotuner's list; `keep` picks per device and call)."""
    seen, out = set(), []
    for tier in TIERS:
        for c in tier.block128 + tier.block64:
            key = (c.block_m, c.block_n, c.warps, c.stages)
            if key not in seen:
                seen.add(key)
                out.append(c.triton())
    return out


def _log_once(key: object, msg: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        log.warning(msg, *args)


def _tma_scratch(size: int, alignment: int, stream):
    """Global scratch for on-device tensor descriptors (triton.set_allocator)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def descriptor_refusal(*ts: torch.Tensor) -> str | None:
    """Why K/V cannot go through tensor descriptors here (None if they can): 16-byte rows and bases. Every stride
    but the unit one counts (fp8's e4m3 v is a (B, H, L, D) view of token-contiguous storage,
    kernels/fp8_prepass.py)."""
    for t in ts:  # int8 k (precision int8-qk) and fp16/bf16 v have different element sizes
        if t.data_ptr() % 16 or any((s * t.element_size()) % 16 for s in t.stride() if s != 1):
            return "a K/V base or row stride is not a multiple of 16 bytes"
    return None


def ensure_allocator() -> None:
    """Give Triton the global scratch that on-device tensor descriptors need (once per process)."""
    if "allocator" not in _logged:
        _logged.add("allocator")
        triton.set_allocator(_tma_scratch)


def launch_plan(kb: torch.Tensor, vb: torch.Tensor, fp8: bool = False) -> tuple[int, bool]:
    """(tier index, descriptors on) for a call on kb's device (`fp8`: a precision fp8 call); sets Triton's
    descriptor allocator on first use and logs the tier once per device and load path."""
    limits = device_limits(kb.device)
    tier = tier_for(limits)
    tma = use_descriptors(limits, tier, fp8)
    why = descriptor_refusal(kb, vb) if tma else None
    key = ("tier", limits, tier.name, why, fp8)
    if key not in _logged:
        _logged.add(key)
        log.info("fused kernel on %s: tier %s%s%s%s", limits.describe(), tier.name,
                 " (forced by $%s)" % TIER_ENV if os.environ.get(TIER_ENV) else "", " at precision fp8" if fp8 else "",
                 ", K/V through tensor descriptors" if tma and why is None else
                 f", pointer loads ({why})" if why else ", pointer loads")
    return TIER_NAMES.index(tier.name), tma and why is None
