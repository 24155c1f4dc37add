"""The quantize pre-pass's division (kernels/quant.py `_div_rn`): one correctly rounded reciprocal r = 1/s per block,
then per element q = x r, e = fma(-q, s, x), q + e r (Markstein), equals the correctly rounded x / s that torch and
spec §8 define, in exact rational arithmetic on values at and around every rounding tie of the int8 and e4m3 grids.

The GPU kernel's own output is checked bit for bit against torch in tests/test_kernels_int8.py and
tests/test_kernels_fp8.py (compiled on a GPU; the CPU interpreter's fma rounds twice, so there the pre-pass divides
with div_rn itself); this test pins the arithmetic those rely on, on this CPU machine.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

F32 = np.float32


def rn32(x: Fraction) -> np.float32:
    """x rounded to the nearest float32, ties to even (exactly)."""
    f = F32(float(x))  # within one ulp; settle between its neighbours exactly
    cands = [np.nextafter(f, F32(-np.inf)), f, np.nextafter(f, F32(np.inf))]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - x), int(c.view(np.uint32)) & 1))


def fma(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    return rn32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def markstein(x: np.float32, s: np.float32, r: np.float32) -> np.float32:
    q = x * r  # float32 product, correctly rounded
    return fma(fma(-q, s, x), r, q)


def cases(seed: int, top: float, count: int) -> list[tuple[np.float32, np.float32]]:
    """(x, s) pairs: s = amax / top correctly rounded for random amax over many binades; x drawn at random, and at,
    one ulp under and one ulp over k s and (k + 1/2) s for integers k up to `top` (the int8 and e4m3 rounding ties)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        amax = F32(rng.uniform(0.5, 1.0) * 2.0 ** int(rng.integers(-60, 20)))
        s = rn32(Fraction(float(amax)) / Fraction(top))
        x = F32(rng.uniform(-1, 1) * amax)
        k = int(rng.integers(0, int(top)))
        for base in (x, F32(k * float(s)), F32((k + 0.5) * float(s))):
            out += [(base, s), (np.nextafter(base, F32(np.inf)), s), (np.nextafter(base, F32(-np.inf)), s)]
    return out


def test_markstein_division_is_the_correctly_rounded_quotient_at_every_tie():
    plain_differs = 0
    for top in (127.0, 448.0):  # int8 q and k; e4m3 v (whose scale is per channel, same arithmetic)
        for x, s in cases(seed=int(top), top=top, count=300):
            r = rn32(1 / Fraction(float(s)))
            want = rn32(Fraction(float(x)) / Fraction(float(s)))
            got = markstein(x, s, r)
            assert got.view(np.uint32) == want.view(np.uint32), (float(x), float(s), float(got), float(want))
            plain_differs += (x * r).view(np.uint32) != want.view(np.uint32)
    # the correction step matters: x * r alone is off by an ulp on a share of these values
    assert plain_differs > 20, plain_differs
