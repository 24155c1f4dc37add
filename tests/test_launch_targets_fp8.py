"""Every kept launch of the fused kernel at precision fp8 compiles for the GPUs with e4m3 tensor cores, fits their
shared memory, and really multiplies P·V in e4m3.

For sm_89 (RTX 40, L4/L40), sm_90 (H100/H200), sm_100 (B200) and sm_120 (RTX 50), the kernel is compiled on this
CPU machine (tests/cross_compile.py) with every config the autotuner keeps there for fp8 (kernels/configs.py: the
device's tier, both spec blocks, the call kinds needing the most memory: compensation and linear heads, with and
without the top-k LUT; on 2026-12-03, triton 3.8, all eight kinds were compiled once for every kept config and
target and one of these two needed the most every time; unlike fp16 and int8-qk, the kind without the LUT, "mixed",
is the larger; a config kept for every kind but that one, `with_fp8_mixed=False`, is compiled for the LUT kind and
for compensation alone, the next largest), as tests/test_launch_targets.py does for fp16 and int8-qk: the launch's
shared memory must be within
the target's opt-in limit, and the PTX must hold an e4m3 MMA (`mma.sync ... e4m3` on sm_89/120, `wgmma ... e4m3`
on sm_90, `tcgen05.mma ... kind::f8f6f4` on sm_100). The fp8 pre-pass (kernels/fp8_prepass.py) compiles and fits
too. Below sm_89 Triton does not compile the kernel, and the op refuses fp8 there (sparseflow/fp8.py).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
from comfyui_sparseflow.kernels import configs
from cross_compile import TARGET_LIMITS, fp8_mma_job

pytest.importorskip("triton")

FP8_TARGETS = (89, 90, 100, 120)
MMA = {89: "mma.sync", 90: "wgmma.mma_async", 100: "tcgen05.mma", 120: "mma.sync"}


def _limits(cc: int) -> configs.DeviceLimits:
    return configs.DeviceLimits((cc // 10, cc % 10), TARGET_LIMITS[cc], f"sm_{cc}")


def _jobs() -> list[tuple[str, tuple, int]]:
    jobs = []
    for cc in FP8_TARGETS:
        limits = _limits(cc)
        tier = configs.tier_for(limits)
        tma = configs.use_descriptors(limits, tier, fp8=True)
        for block in (64, 128):
            for c in configs.launch_configs(tier, block, has_lut=False, int8=True):
                cfg = (c.block_m, c.block_n, c.warps, c.stages)
                # the mixed kind where the config takes it, else the two next largest (LUT + compensation + linear;
                # compensation alone)
                kinds = {(False, True, True)} if c.with_fp8_mixed else {(False, True, False)}
                kinds |= {(True, True, True)} if c.with_lut else set()
                for kind in sorted(kinds):
                    what = f"fused fp8 {'/'.join(map(str, cfg))} block {block} kind {''.join(map(str, map(int, kind)))}"
                    jobs.append((what, ("fused", (cfg, block, tma, *kind, "fp16", "fp8"), cc), cc))
            jobs.append((f"quantize_fp8 block {block}", ("quantize_fp8", (block,), cc), cc))
    return jobs


@pytest.fixture(scope="module")
def compiled():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRITON_INTERPRET", raising=False)  # the spawned workers jit, not interpret
        jobs = _jobs()
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(fp8_mma_job, [job for _, job, _ in jobs]))
    return [(what, cc, shared, mmas) for (what, _, cc), (shared, mmas) in zip(jobs, done)]


@pytest.mark.parametrize("cc", FP8_TARGETS, ids=[f"sm_{cc}" for cc in FP8_TARGETS])
def test_every_kept_fp8_launch_fits_and_multiplies_in_e4m3(compiled, cc):
    rows = [(what, shared, mmas) for what, c, shared, mmas in compiled if c == cc]
    limit = TARGET_LIMITS[cc]
    print(f"\nsm_{cc} ({limit} B): " + "; ".join(f"{w} {s} {m}" for w, s, m in rows))
    over = [f"{what}: {shared} B" for what, shared, _ in rows if shared > limit]
    assert not over, f"sm_{cc} allows {limit} B per block; these fp8 launches ask for more: {over}"
    for what, _, mmas in rows:
        if what.startswith("fused"):
            assert any(m.startswith(MMA[cc]) for m in mmas), f"{what}: no e4m3 {MMA[cc]} in the PTX ({mmas})"


@pytest.mark.parametrize("cc", FP8_TARGETS, ids=[f"sm_{cc}" for cc in FP8_TARGETS])
def test_every_fp8_target_keeps_a_config_for_each_spec_block_and_call_kind(cc):
    tier = configs.tier_for(_limits(cc))
    for block in (64, 128):
        for lut, mixed in ((False, False), (True, False), (False, True)):
            assert configs.launch_configs(tier, block, lut, int8=True, fp8_mixed=mixed), \
                f"sm_{cc} ({tier.name}): no fp8 config for block {block}, lut={lut}, mixed={mixed}"


def test_fp8_does_not_compile_for_sm86_so_it_is_refused_there():
    """Triton 3.8 has no e4m3 type below sm_89: the fp8 kernel fails to compile for sm_86 (RTX 30), which is why
    `fp8_device_reason` asks for 8.9+ (tests/test_fp8.py, tests/test_nodes_patch.py check the refusal)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRITON_INTERPRET", raising=False)
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            with pytest.raises(Exception):
                pool.submit(fp8_mma_job, ("fused", ((64, 32, 4, 2), 64, False, False, False, False, "fp16", "fp8"),
                                          86)).result()


@pytest.mark.parametrize("tier_name, config", [("hopper", (128, 128, 8, 3)), ("consumer", (128, 64, 8, 3))])
def test_autotune_prune_offers_a_with_fp8_mixed_false_config_to_every_fp8_kind_but_the_mixed_one(monkeypatch, tier_name,
                                                                                                 config):
    """`configs.keep` (the autotuner's prune) reads the call kind from the launch's constexprs: an fp8 call with
    compensation and linear heads and no LUT is not offered the config that compiles too large for it; the same
    config is offered to fp8 calls of the other kinds and to fp16 calls of that kind. Device and compiler are
    stand-ins (an H200's limits, every compile 1 KiB), so only the prune's choice is checked."""
    import torch
    from comfyui_sparseflow.kernels import fused

    class _Compiled:
        metadata = type("M", (), {"shared": 1024})()

    monkeypatch.setattr(configs, "device_limits", lambda device: configs.DeviceLimits((9, 0), 232448, "H200"))
    monkeypatch.setattr(fused._jit_kernel, "warmup", lambda *a, **k: _Compiled())
    named = {"Q": torch.empty(1), "TIER": configs.TIER_NAMES.index(tier_name), "BLOCK": 128}

    def kept(precision: int, lut: bool, comp: bool, linear: bool) -> set:
        flags = dict(HAS_LUT=lut, HAS_COMP=comp, HAS_LINEAR=linear, PRECISION=precision)
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                for c in configs.keep(configs.all_configs(), {**named, **flags})}

    assert config not in kept(2, False, True, True)
    assert config in kept(2, False, True, False)
    assert config in kept(2, True, True, True)
    assert config in kept(0, False, True, True)


def test_the_fp8_prepass_writes_e4m3_v_16_bytes_at_a_time(monkeypatch):
    """e4m3 v goes out token-contiguous (kernels/quant.py); masked by the storage's row length LP (a multiple of 16)
    its stores are 16-byte vectors. Masked by L they compiled to one byte per store (64 `st.global.b8` per thread)
    and the pre-pass took 0.48 ms of fp8's 1.79 ms call on Wan 1.3B (H200, bench/profile_prepass.py)."""
    import re

    from cross_compile import ptx_job

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the spawned workers jit, not interpret
    ccs = (89, 90, 120)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        ptx = dict(zip(ccs, pool.map(ptx_job, [("quantize_fp8", (128,), cc) for cc in ccs])))
    for cc, text in ptx.items():
        stores = re.findall(r"st\.global[\w.]*", text)
        assert "st.global.b8" not in stores and "st.global.v4.b32" in stores, (cc, sorted(set(stores)))
