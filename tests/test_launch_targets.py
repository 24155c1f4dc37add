"""Every launch of the pack's Triton kernels fits the shared memory of the GPUs users own, checked by compiling.

For each target of ANCHORS.md (sm_80 A100, sm_86/89/120 RTX 30/40/50, sm_90 H100/H200, sm_100 B200) each kernel is
compiled on this CPU machine for that target (tests/cross_compile.py) with every config the autotuner would keep
there (kernels/configs.py: the device's tier, each spec block, each call kind, each precision: fp16 and int8-qk,
spec §8; fp8 in tests/test_launch_targets_fp8.py) and the launch's shared memory must be within the target's
opt-in limit; every target keeps at least one config per spec block (64 and 128). Compiles run in two spawned
processes (about 4 minutes on 2 cores; Triton caches them on disk for later runs).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from itertools import product

import pytest
from comfyui_sparseflow.kernels import configs
from comfyui_sparseflow.sparseflow.plan import FP16, INT8_QK
from cross_compile import TARGET_LIMITS, ptx_job, shared_memory_job

pytest.importorskip("triton")

# call kinds (HAS_LUT, HAS_COMP, HAS_LINEAR): a config is compiled with every path it may serve compiled in, the
# largest kind (every path; for a config kept only for calls without a LUT, compensation + linear heads). On
# 2026-12-02 (triton 3.8) that kind needed the most shared memory of all eight for every config, on every target.
def _largest_kind(config: configs.LaunchConfig) -> tuple[bool, bool, bool]:
    return (config.with_lut, True, True)

MODEL_DIMS = (5120,)  # Wan 14B: the widest rows (one token per program at 8192 columns)
ADD_NORM_CALLS = ((False, False, True, False, True), (True, True, True, True, False), (True, False, True, False, True),
                  (True, True, False, False, False))  # the four adds of a fused Wan block


def _limits(cc: int) -> configs.DeviceLimits:
    return configs.DeviceLimits((cc // 10, cc % 10), TARGET_LIMITS[cc], f"sm_{cc}")


def _fused_job(c: configs.LaunchConfig, block: int, tma: bool, precision: str, cc: int) -> tuple[str, tuple, int]:
    cfg, kind = (c.block_m, c.block_n, c.warps, c.stages), _largest_kind(c)
    what = f"fused {'/'.join(map(str, cfg))} block {block} lut={kind[0]} {precision}"
    return what, ("fused", (cfg, block, tma, *kind, "fp16", precision), cc), cc


def _jobs() -> list[tuple[str, tuple, tuple]]:
    """(what, job, target) for every launch to check: job = (builder, args, cc)."""
    jobs = []
    for cc in TARGET_LIMITS:
        limits = _limits(cc)
        tier = configs.tier_for(limits)
        tma = configs.use_descriptors(limits, tier)
        for block in (64, 128):
            for precision in (FP16, INT8_QK):  # fp8 (sm_89+ only): tests/test_launch_targets_fp8.py
                for c in configs.launch_configs(tier, block, has_lut=False, int8=precision == INT8_QK):
                    jobs.append(_fused_job(c, block, tma, precision, cc))
        for span in (64, 128):
            jobs.append((f"pooled_mean span {span}", ("pooled_mean", (span,), cc), cc))
            jobs.append((f"comp_bias block {span}", ("comp_bias", (span,), cc), cc))
            jobs.append((f"quantize block {span}", ("quantize", (span,), cc), cc))
        jobs.append(("k_mean", ("k_mean", (), cc), cc))
        for dim in MODEL_DIMS:
            jobs.append((f"norm_rope C={dim}", ("norm_rope", (dim,), cc), cc))
            for flags in ADD_NORM_CALLS:
                jobs.append((f"add_norm C={dim} {flags}", ("add_norm", (dim, *flags), cc), cc))
    return jobs


@pytest.fixture(scope="module")
def compiled(monkeypatch_module):
    monkeypatch_module.delenv("TRITON_INTERPRET", raising=False)  # the spawned workers jit, not interpret
    jobs = _jobs()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        shared = list(pool.map(shared_memory_job, [job for _, job, _ in jobs]))
    return [(what, cc, need) for (what, _, cc), need in zip(jobs, shared)]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("cc", sorted(TARGET_LIMITS), ids=[f"sm_{cc}" for cc in sorted(TARGET_LIMITS)])
def test_every_kept_launch_fits_the_targets_shared_memory(compiled, cc):
    rows = [(what, need) for what, c, need in compiled if c == cc]
    limit = TARGET_LIMITS[cc]
    over = [f"{what}: {need} B" for what, need in rows if need > limit]
    assert not over, f"sm_{cc} allows {limit} B per block; these launches ask for more: {over}"
    print(f"\nsm_{cc} ({limit} B): " + "; ".join(f"{what} {need}" for what, need in rows if what.startswith("fused")))


@pytest.mark.parametrize("cc", sorted(TARGET_LIMITS), ids=[f"sm_{cc}" for cc in sorted(TARGET_LIMITS)])
def test_every_target_keeps_a_config_for_each_spec_block_call_kind_and_precision(cc):
    tier = configs.tier_for(_limits(cc))
    for block, lut, int8 in product((64, 128), (False, True), (False, True)):
        assert configs.launch_configs(tier, block, lut, int8), \
            f"sm_{cc} ({tier.name}): none for block {block}, lut={lut}, int8={int8}"


def test_tiers_follow_the_devices_shared_memory():
    assert [configs.tier_for(_limits(cc)).name for cc in (80, 86, 89, 90, 100, 120)] == \
        ["a100", "consumer", "consumer", "hopper", "blackwell", "rtx50"]
    assert configs.tier_for(configs.DeviceLimits((7, 5), 65536)).name == "small"
    assert configs.use_descriptors(_limits(90), configs.tier_for(_limits(90)))
    rtx50 = configs.tier_for(_limits(120))
    assert configs.use_descriptors(_limits(120), rtx50) and not configs.use_descriptors(_limits(120), rtx50, fp8=True)
    assert not configs.use_descriptors(_limits(89), configs.tier_for(_limits(89)))  # RTX 40: pointer loads


def test_rtx50_descriptors_compile_to_the_copy_engine(monkeypatch):
    """sm_120's tier reads K/V through tensor descriptors because Triton lowers them to TMA there (on sm_89 the same
    source falls back to plain loads, which would make the tier's choice pointless)."""
    c = configs.launch_configs(configs.tier_for(_limits(120)), 128, has_lut=False)[0]
    job = ("fused", ((c.block_m, c.block_n, c.warps, c.stages), 128, True, False, True, True))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the spawned workers jit, not interpret
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        ptx = dict(zip((120, 89), pool.map(ptx_job, [(*job, cc) for cc in (120, 89)])))
    assert "cp.async.bulk.tensor" in ptx[120]
    assert "cp.async.bulk.tensor" not in ptx[89]


def test_a_forced_tier_serves_any_device(monkeypatch):
    """$SPARSEFLOW_LAUNCH_TIER: an H200 runs the configs an RTX card gets (the consumer-card proxy)."""
    monkeypatch.setenv(configs.TIER_ENV, "consumer")
    tier = configs.tier_for(_limits(90))
    assert tier.name == "consumer" and not configs.use_descriptors(_limits(90), tier)


def test_int8_qk_does_not_compile_for_sm75_so_it_is_refused_there(monkeypatch):
    """Triton 3.8 has no int8 tensor-core dot below sm_80: the int8-qk kernel fails to compile for sm_75 (T4), and
    the op refuses the precision there with a reason naming the device (the Patch node raises it at patch time)."""
    from comfyui_sparseflow.sparseflow import quantize

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(Exception):
            pool.submit(shared_memory_job, ("fused", ((64, 32, 4, 2), 64, False, False, False, False, "fp16",
                                                      "int8-qk"), 75)).result()
    monkeypatch.setattr(quantize.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(quantize.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(quantize.torch.cuda, "get_device_capability", lambda dev=None: (7, 5))
    monkeypatch.setattr(quantize.torch.cuda, "get_device_name", lambda dev=None: "Tesla T4")
    assert "8.0+" in quantize.int8_device_reason() and "Tesla T4" in quantize.int8_device_reason()
    monkeypatch.setattr(quantize.torch.cuda, "get_device_capability", lambda dev=None: (8, 9))
    assert quantize.int8_device_reason() is None
