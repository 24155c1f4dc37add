"""The public op: backend selection says why, explicit backends that cannot run raise, torch.compile sees no break."""

import logging

import pytest
import torch
from comfyui_sparseflow.sparseflow import ops
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE, AttentionPlan, uniform_plan
from comfyui_sparseflow.sparseflow.reference import reference_attention

G = Geometry(frames=3, height=4, width=8, prefix=5)  # L = 101
PLAN = AttentionPlan(G, (SPARSE, DENSE, LINEAR), (0, 0, 0), (1, 0, 0), anchors=(0,), compensation=True, block=64)


def _qkv(dtype=torch.float32, layout="bhld"):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 3, G.length, 64, generator=gen, dtype=dtype) for _ in range(3)]
    if layout == "blhd":
        xs = [x.transpose(1, 2).reshape(2, G.length, 3 * 64).contiguous() for x in xs]
    return xs


@pytest.fixture(autouse=True)
def _auto_backend():
    ops.use_backend("auto")
    yield
    ops.use_backend("auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal; the GPU run uses triton")
def test_cpu_refuses_triton_with_a_reason_and_auto_runs_the_reference(caplog):
    reasons = ops.available_backends()
    assert reasons["reference"] is None
    assert "no CUDA device" in reasons["triton"]
    q, k, v = _qkv()
    ops._logged.clear()
    with caplog.at_level(logging.INFO, logger="sparseflow.ops"):
        assert ops.backend_for(q, PLAN) == "reference"
        ops.backend_for(q, PLAN)
    lines = [r.getMessage() for r in caplog.records if "runs on reference" in r.getMessage()]
    assert len(lines) == 1 and "triton refused: triton: no CUDA device" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal; the GPU run uses triton")
def test_explicit_triton_on_cpu_raises_value_error_with_reasons():
    with pytest.raises(ValueError, match="no CUDA device"):
        ops.use_backend("triton")
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="backend 'triton' cannot run"):
        ops.attention(q, k, v, PLAN, backend="triton")


def test_unknown_backend_raises_value_error():
    with pytest.raises(ValueError, match="backend must be"):
        ops.use_backend("cuda")


@pytest.mark.parametrize("layout", ["bhld", "blhd"])
def test_attention_equals_reference_in_both_layouts(layout):
    q, k, v = _qkv(layout=layout)
    heads = 3 if layout == "blhd" else None
    out = ops.attention(q, k, v, PLAN, heads=heads, backend="reference")
    ref = reference_attention(q, k, v, PLAN, heads=heads)
    assert out.shape == q.shape
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU compile path; GPU compile is covered by the bench")
def test_custom_op_compiles_fullgraph_with_reference_backend():
    q, k, v = _qkv(layout="blhd")

    def block(q, k, v):
        return ops.attention(q * 1.0, k, v, PLAN, heads=3, backend="reference") + 1.0

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    torch.testing.assert_close(out, reference_attention(q, k, v, PLAN, heads=3) + 1.0)


def test_fake_impl_gives_shape_and_dtype_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, G.length, 3 * 64, dtype=torch.bfloat16)
        out = ops.attention(q, q, q, PLAN, heads=3, backend="reference")
    assert out.shape == q.shape and out.dtype == torch.bfloat16


def test_bad_inputs_raise_value_error_naming_the_argument():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="rank"):
        ops.attention(q[0, 0], k, v, PLAN)
    with pytest.raises(ValueError, match="k shape"):
        ops.attention(q, k[:, :, :-1], v, PLAN)
    with pytest.raises(ValueError, match="heads"):
        ops.attention(q, k, v, uniform_plan(G, 2, block=64))
    with pytest.raises(ValueError, match="tokens"):
        ops.attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], PLAN)
    with pytest.raises(ValueError, match="not divisible"):
        ops.attention(*_qkv(layout="blhd"), PLAN, heads=5)


@pytest.mark.parametrize("layout", ["bhld", "blhd"])
def test_all_dense_call_equals_dense_attention_on_every_backend(layout):
    """An all-dense plan runs torch SDPA on the triton backend (the fallback costs nothing) and equals dense."""
    if not torch.cuda.is_available():
        pytest.skip("triton does not run all-dense calls on cpu (the reference covers the CPU path)")
    g = Geometry(frames=5, height=30, width=52)
    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(2, 12, g.length, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
               for _ in range(3))
    plan = uniform_plan(g, 12, route=DENSE)
    if layout == "blhd":
        q, k, v = (x.transpose(1, 2).reshape(2, g.length, 12 * 128).contiguous() for x in (q, k, v))
    out = ops.attention(q, k, v, plan, heads=12 if layout == "blhd" else None, backend="triton")
    ref = ops.attention(q.float(), k.float(), v.float(), plan, heads=12 if layout == "blhd" else None,
                        backend="reference")
    rel = float((out.float() - ref).norm() / ref.norm())
    print(f"\nall-dense via SDPA ({layout}): rel. error {rel:.2e} vs the fp32 reference")
    assert out.shape == q.shape and out.dtype == q.dtype and rel < 1e-2


def test_all_dense_plan_runs_torch_sdpa_not_the_kernel_logs_once_and_equals_dense(monkeypatch, caplog):
    """The triton backend hands an all-dense call to torch SDPA (ComfyUI's backend priority), on CPU too."""
    plan = uniform_plan(G, 3, route=DENSE, block=64)
    q, k, v = _qkv()
    dense = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    torch.testing.assert_close(ops.attention(q, k, v, plan, backend="reference"), dense, atol=1e-5, rtol=1e-5)

    def no_kernel(*args, **kwargs):
        raise AssertionError("the fused kernel ran for an all-dense call")

    monkeypatch.setattr(ops, "_triton_import", {"fn": no_kernel, "error": None})
    monkeypatch.setattr(ops, "backend_for", lambda q, plan, backend=None: "triton")  # CPU: as if CUDA were here
    ops._logged.discard(("sdpa-dense",))
    with caplog.at_level(logging.INFO, logger="sparseflow.ops"):
        out = ops._run(q, k, v, plan, None, "triton")
        blhd = [x.transpose(1, 2).reshape(2, G.length, 3 * 64) for x in (q, k, v)]
        out_blhd = ops._run(*blhd, plan, 3, "triton")
        scaled = ops._run(q, k, v, uniform_plan(G, 3, route=DENSE, block=64, scale=0.05), None, "triton")
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_blhd, dense.transpose(1, 2).reshape(2, G.length, 3 * 64), atol=1e-5, rtol=1e-5)
    scaled_ref = reference_attention(q, k, v, uniform_plan(G, 3, route=DENSE, block=64, scale=0.05))
    torch.testing.assert_close(scaled, scaled_ref, atol=1e-5, rtol=1e-5)
    assert sum("all-dense calls run on torch SDPA" in r.getMessage() for r in caplog.records) == 1

    ran = []
    monkeypatch.setattr(ops, "_triton_import", {"fn": lambda q, k, v, plan, heads=None: ran.append(plan) or q,
                                                "error": None})
    ops._run(q, k, v, PLAN, None, "triton")  # a mixed plan keeps the fused launch
    assert ran == [PLAN]


def test_device_reason_names_what_the_gpu_lacks():
    from comfyui_sparseflow.sparseflow.inputs import device_reason

    assert device_reason((8, 9), torch.bfloat16) is None and device_reason((7, 5), torch.float16) is None
    assert "needs 8.0 or newer" in device_reason((7, 5), torch.bfloat16)
    assert "need 7.5 or newer" in device_reason((6, 1), torch.float16)
