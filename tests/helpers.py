"""Shared test helpers: readable mismatch reports (after Liger's assert_verbose_allclose), seeded attention inputs and
the kernel-vs-reference check the kernel tests share."""

from __future__ import annotations

import torch


def assert_close_report(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0,
                        what: str = "output") -> None:
    """assert |a - e| <= atol + rtol |e| everywhere; on failure name the count and the first indices."""
    a, e = actual.double(), expected.double()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    assert torch.isfinite(a).all(), f"{what}: {int((~torch.isfinite(a)).sum())} non-finite values"
    bad = (a - e).abs() > atol + rtol * e.abs()
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        worst = (a - e).abs().max().item()
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements differ (atol={atol}, rtol={rtol}); "
                             f"max abs diff {worst:.3e}; first at {idx}")


def assert_mean_close(got: torch.Tensor, k: torch.Tensor) -> None:
    """A pre-pass's fp32 channel mean of k (B, H, L, D) against the exact (fp64) one: within a few fp32 roundings of
    the channel's mean magnitude (4e-6 of it: a sum at most ~50 rounded additions deep); a token left out or counted
    twice is off by 1 / L of it."""
    exact = k.double().mean(dim=2)
    assert got.dtype == torch.float32 and got.shape == exact.shape
    bound = 4e-6 * k.double().abs().mean(dim=2)
    err = (got.double() - exact).abs()
    worst = float((err / bound.clamp_min(1e-300)).max())
    assert bool((err <= bound).all()), f"k mean off by up to {worst:.2f} x 4e-6 of the channel's mean |k|"


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def assert_kernel_matches(out: torch.Tensor, ref: torch.Tensor, q: torch.Tensor, tol: tuple[float, float]) -> None:
    """A kernel's output against the reference: q's shape, dtype and strides, every element within `tol`'s atol, and
    the relative error under `tol`'s bound."""
    atol, rel = tol
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride() == q.stride()
    assert_close_report(out, ref, atol=atol)
    assert rel_error(out, ref) < rel, f"rel error {rel_error(out, ref):.2e} >= {rel}"


def random_qkv(batch: int, heads: int, length: int, dim: int, dtype: torch.dtype, seed: int = 0,
               layout: str = "bhld", *, k_offset: float = 0.0, v_spread: float = 0.0,
               device: str = "cpu") -> list[torch.Tensor]:
    """Seeded random q, k, v (B, H, L, D), or with layout "blhd" ComfyUI's contiguous (B, L, H*D). `k_offset`: a
    per-channel offset shared by every key (as DiT keys have; int8-qk's smoothing removes it); `v_spread`: per-channel
    log-normal scales of v (what fp8's per-channel V scale is for). Drawn on the CPU in a fixed order, so a case sees
    the same numbers on every device."""
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, heads, length, dim, generator=gen) for _ in range(3)]
    if k_offset:
        xs[1] = xs[1] + k_offset * torch.randn(dim, generator=gen)
    if v_spread:
        xs[2] = xs[2] * torch.exp(v_spread * torch.randn(dim, generator=gen))
    xs = [x.to(dtype).to(device) for x in xs]
    if layout == "blhd":
        xs = [x.transpose(1, 2).reshape(batch, length, heads * dim).contiguous() for x in xs]
    return xs


def check_kernel_vs_reference(kernel, reference, plan, qkv: list[torch.Tensor], tol: tuple[float, float],
                              layout: str = "bhld", lut: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """Run `kernel` and `reference` on the same inputs and plan; assert_kernel_matches; return the kernel's output."""
    q, k, v = qkv
    heads = plan.heads if layout == "blhd" else None
    out = kernel(q, k, v, plan, heads=heads, lut=lut, **kw)
    ref = reference(q, k, v, plan, heads=heads, lut=lut)
    assert_kernel_matches(out, ref, q, tol)
    return out
