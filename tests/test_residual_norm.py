"""Fused residual add + LayerNorm + modulation of a Wan block: reference semantics, Triton kernel, errors.

The reference (ComfyUI's own op sequence) is checked in float64 against the formula written out; the Triton
kernel against the reference (TRITON_INTERPRET=1 on CPU at small shapes, compiled on CUDA, plus the Wan 2.1
1.3B CFG shape there). tests/test_nodes_block_norms.py checks the patched Wan block against ComfyUI's block.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from comfyui_sparseflow.sparseflow.residual_norm import add_norm, add_norm_reason, add_norm_reference  # noqa: E402
from helpers import assert_close_report  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def _rows(gen, batch, length, c, dtype, per_token):
    """Six modulation rows as ComfyUI makes them: (modulation + e).unbind(2), so each row is a strided view."""
    e = torch.randn(batch, length if per_token else 1, 6, c, generator=gen) * 0.3
    return (e.to(dtype).to(DEV)).unbind(2)


def test_reference_is_the_formula_in_float64():
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randn(2, 9, 40, generator=gen, dtype=torch.float64) for _ in range(2))
    g, sh, sc = (torch.randn(2, 1, 40, generator=gen, dtype=torch.float64) for _ in range(3))
    w, b = torch.randn(40, generator=gen, dtype=torch.float64), torch.randn(40, generator=gen, dtype=torch.float64)
    s = x + y * g
    mu = s.mean(-1, keepdim=True)
    ln = (s - mu) / torch.sqrt(((s - mu) ** 2).mean(-1, keepdim=True) + 1e-6)
    out_s, out_n = add_norm_reference(x, y, g, shift=sh, scale=sc, eps=1e-6)
    torch.testing.assert_close(out_s, s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_n, sh + ln * (1 + sc), rtol=1e-12, atol=1e-12)
    _, affine = add_norm_reference(x, y, g, weight=w, bias=b, eps=1e-6)
    torch.testing.assert_close(affine, ln * w + b, rtol=1e-12, atol=1e-12)
    plain, none = add_norm_reference(x, y, None, norm=False)
    torch.testing.assert_close(plain, x + y, rtol=0, atol=0)
    assert none is None


# the four adds + norms of a Wan block: (has y, has gate, norm, affine, modulate)
CASES = {
    "norm1_modulated": (False, False, True, False, True),
    "gated_add_then_affine_norm3": (True, True, True, True, False),
    "add_then_norm2_modulated": (True, False, True, False, True),
    "gated_add_only": (True, True, False, False, False),
}


def _kernel_case(case, batch, length, c, dtype, per_token=False, shared_rows=False, seed=0, channel_major=False):
    from comfyui_sparseflow.kernels.residual_norm import add_norm as kernel

    has_y, has_gate, norm, affine, modulate = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, length, c, generator=gen) * 3 + 1).to(dtype).to(DEV)
    if channel_major:  # Wan's stream in the first block: patch_embedding(x).flatten(2).transpose(1, 2)
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    y = (torch.randn(batch, length, c, generator=gen) * 2).to(dtype).to(DEV) if has_y else None
    e = _rows(gen, 1 if shared_rows else batch, length, c, dtype, per_token)
    w = (torch.rand(c, generator=gen) + 0.5).to(dtype).to(DEV) if affine else None
    b = torch.randn(c, generator=gen).to(dtype).to(DEV) if affine else None
    gate = e[2] if has_gate else None
    shift, scale = (e[0], e[1]) if modulate else (None, None)
    assert add_norm_reason(x, y, gate, norm=norm, weight=w, bias=b, shift=shift, scale=scale) is None
    s, n = kernel(x, y, gate, norm, w, b, shift, scale, 1e-6)
    rs, rn = add_norm_reference(x, y, gate, norm=norm, weight=w, bias=b, shift=shift, scale=scale, eps=1e-6)
    ulp = ULP[dtype]
    exact = dtype == torch.float16 or DEV == "cuda"  # the CPU interpreter truncates fp32 -> bf16
    if has_y:
        assert s.dtype == dtype and s.is_contiguous()
        assert_close_report(s, rs, atol=0 if exact else ulp, rtol=0 if exact else ulp, what="sum")
    else:
        assert s is x
    if norm:
        assert n.dtype == dtype and n.shape == x.shape and n.is_contiguous()
        # ComfyUI's roundings are mirrored, so only the fp32 mean / variance sums' order differs: a few
        # elements one or two units in the last place apart (4 where the interpreter truncates each of the
        # sum, the norm, 1 + scale and the output)
        bound = (2 if exact else 4) * ulp
        assert_close_report(n, rn, atol=bound, rtol=bound, what="norm")
        if exact:
            assert (n != rn).float().mean().item() < 0.01
    else:
        assert n is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_reference_non_power_of_two_dim_odd_length_cfg_batch(case, dtype):
    # C = 96: a 128-wide program with masked lanes (the mean / variance must ignore them); L = 13 is odd
    _kernel_case(case, batch=2, length=13, c=96, dtype=dtype)


@pytest.mark.parametrize("case", ["norm1_modulated", "gated_add_only"])
def test_kernel_per_token_modulation_rows(case):
    # Wan 2.2 TI2V: one timestep per token, so e holds a row per token (stride 6C between tokens)
    _kernel_case(case, batch=2, length=11, c=64, dtype=torch.float16, per_token=True, seed=1)


@pytest.mark.parametrize("case", ["norm1_modulated", "gated_add_then_affine_norm3"])
def test_kernel_reads_a_channel_major_stream(case):
    _kernel_case(case, batch=2, length=10, c=64, dtype=torch.float16, seed=4, channel_major=True)


def test_kernel_rows_shared_by_the_batch():
    _kernel_case("add_then_norm2_modulated", batch=2, length=9, c=64, dtype=torch.float16, shared_rows=True, seed=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU test: needs CUDA (the Wan shape is too big for the "
                                                          "interpreter)")
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_reference_at_wan_1_3b_shape_on_gpu(case):
    # Wan 2.1 1.3B 480p x 81f, CFG batch: B=2, L=32760, C=1536; bound: 2 ulp per element, < 1 % of elements differ
    _kernel_case(case, batch=2, length=32760, c=1536, dtype=torch.float16, seed=3)


def _in_place_case(length, c, per_token, seed, dtype=torch.float16):
    """The FFN pieces' add (nodes/fused_block.py): x[b, rows] += y * gate[b, rows] written into x itself, against
    ComfyUI's torch.addcmul on the same slices; the rows outside the piece are left alone."""
    from comfyui_sparseflow.sparseflow.residual_norm import add_into

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, length, c, generator=gen) * 3 + 1).to(dtype).to(DEV)
    gate = _rows(gen, 2, length, c, dtype, per_token)[5]
    b, rows = 1, slice(length // 3, length - 1)
    y = (torch.randn(rows.stop - rows.start, c, generator=gen) * 2).to(dtype).to(DEV)
    g = gate[b, rows if per_token else slice(None)]
    want = x.clone()
    torch.addcmul(want[b, rows], y, g, out=want[b, rows])
    before = x.clone()
    xs = x[b, rows]
    assert add_into(xs[None], xs[None], y[None], g[None], "triton") is not None
    assert_close_report(x, want, atol=0, rtol=0, what="in-place gated add")
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[b, rows] = False
    assert torch.equal(x[outside], before[outside])
    ref = before.clone()
    add_into(ref[b, rows][None], before[b, rows][None], y[None], g[None], "reference")
    assert torch.equal(ref, want)


@pytest.mark.parametrize("per_token", [False, True], ids=["gate_per_batch", "gate_per_token"])
def test_gated_add_into_the_stream_in_place_is_comfyuis_addcmul(per_token):
    _in_place_case(length=17, c=96, per_token=per_token, seed=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU test: the Wan 2.2 5B piece is too big for the "
                                                          "interpreter")
@pytest.mark.parametrize("per_token", [False, True], ids=["gate_per_batch", "gate_per_token"])
def test_gated_add_into_the_stream_in_place_at_wan_5b_piece_shape_on_gpu(per_token):
    _in_place_case(length=27280, c=3072, per_token=per_token, seed=6)


def test_the_kernels_out_is_refused_with_a_norm_or_another_dtype():
    from comfyui_sparseflow.kernels.residual_norm import add_norm as kernel

    x = torch.zeros(1, 4, 64, dtype=torch.float16, device=DEV)
    for kw in ({"norm": True}, {"out": torch.zeros(1, 4, 64, device=DEV)}):
        args = {"norm": False, "out": x} | kw
        with pytest.raises(ValueError, match="`out`"):
            kernel(x, x, None, args["norm"], None, None, None, None, 1e-6, out=args["out"])


def test_op_reference_backend_and_errors_name_the_input():
    x, y = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    g = torch.randn(2, 1, 32)
    s, n = add_norm(x, y, g, norm=True, backend="reference")
    rs, rn = add_norm_reference(x, y, g)
    torch.testing.assert_close(s, rs, rtol=0, atol=0)
    torch.testing.assert_close(n, rn, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"gate shape \(2, 3, 32\) is not \(1 or B, 1 or L, C\)"):
        add_norm(x, y, torch.randn(2, 3, 32), backend="reference")
    with pytest.raises(ValueError, match="shift and scale come together"):
        add_norm(x, shift=g, backend="reference")
    with pytest.raises(ValueError, match="module output"):
        add_norm(x, torch.randn(2, 5, 16), backend="reference")
    with pytest.raises(ValueError, match="norm weight is not a contiguous"):
        add_norm(x, weight=torch.ones(16), bias=torch.zeros(16), backend="reference")
    with pytest.raises(ValueError, match="gate last dim is not contiguous"):
        add_norm(x, y, torch.randn(2, 1, 64)[..., ::2], backend="reference")
    with pytest.raises(ValueError, match="backend must be one of"):
        add_norm(x, backend="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend 'triton' cannot run: no CUDA device"):
            add_norm(x.half(), backend="triton")


def test_ffn_gelu_epilogue_is_used_only_where_it_is_comfyuis_function():
    from comfyui_sparseflow.sparseflow.ffn import linear_gelu_reason

    lin, act = torch.nn.Linear(16, 32), torch.nn.GELU(approximate="tanh")
    x = torch.randn(2, 3, 16)
    assert "input on cpu" in linear_gelu_reason(lin, act, x)
    assert "not GELU(approximate='tanh')" in linear_gelu_reason(lin, torch.nn.GELU(), x)
    assert "no bias" in linear_gelu_reason(torch.nn.Linear(16, 32, bias=False), act, x)
    lin.weight_function = [lambda w: w]  # a LoRA patch function, as ComfyUI's ops hold them
    assert "patch functions" in linear_gelu_reason(lin, act, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU test: the GELU epilogue is cuBLASLt's")
def test_ffn_gelu_epilogue_matches_comfyuis_linear_then_gelu_on_gpu():
    # Wan 2.1 1.3B FFN at the CFG shape: (2, 32760, 1536) -> 8960; bound: rel. error 1e-3 (fp16 rounding, ~4e-4 seen)
    from comfyui_sparseflow.sparseflow.ffn import linear_gelu, linear_gelu_reason

    gen = torch.Generator().manual_seed(5)
    lin = torch.nn.Linear(1536, 8960).half().cuda()
    torch.nn.init.normal_(lin.weight, std=1536 ** -0.5, generator=None)
    x = torch.randn(2, 32760, 1536, generator=gen).half().cuda()
    act = torch.nn.GELU(approximate="tanh")
    assert linear_gelu_reason(lin, act, x) is None
    out = linear_gelu(x, lin.weight, lin.bias)
    ref = act(lin(x))
    assert out.shape == ref.shape and out.dtype == ref.dtype
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert err < 1e-3, err


def test_streams_over_32_bit_offsets_are_refused_with_the_reason():
    # a 14B 720p x 121f stream with a batch of 4 has 4 * 111600 * 5120 > 2**31 elements: the kernels' row
    # offsets are 32-bit, so those calls keep ComfyUI's own ops (a meta tensor: no memory is allocated)
    from comfyui_sparseflow.sparseflow import prologue

    x = torch.empty(4, 111600, 5120, device="meta", dtype=torch.float16)
    assert "32-bit offsets" in add_norm_reason(x, shift=x[:, :1], scale=x[:, :1])
    assert add_norm_reason(x[:2], shift=x[:2, :1], scale=x[:2, :1]) is None
    w = torch.ones(5120, device="meta")
    f = torch.empty(1, 111600, 1, 64, 2, 2, device="meta")
    assert "32-bit offsets" in prologue.layout_reason((4, 111600, 5120), torch.device("meta"), w, f, 128)
    assert prologue.layout_reason((2, 111600, 5120), torch.device("meta"), w, f, 128) is None
