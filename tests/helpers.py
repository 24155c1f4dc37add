"""Shared test helpers: readable mismatch reports (after Liger's assert_verbose_allclose)."""

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
