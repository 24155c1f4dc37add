"""Peer attention implementations that the GPU bench times beside SparseFlow, one provider per peer.

Each provider is `make_<name>(q, k, v, block_mask) -> fn` where q, k, v are bf16 (B, H, L, D=128)
contiguous CUDA tensors and `block_mask` is a (B, H, ceil(L/128), ceil(L/128)) bool table of
computed (query block, key block) pairs at block 128 (None for dense peers). All setup (layout copies,
padding, LUTs, BlockMask, module loading) happens in `make_*`; the returned zero-arg `fn()` runs only
the attention and returns the output as a (B, H, L, D) tensor (possibly a strided view).

Peer code is never committed: bench/prepare_peers.sh downloads it from PyPI into .peers/ (or the
folder named by $SPARSEFLOW_PEERS), and it is imported lazily from there. Importing this module needs
only torch; nothing here touches a GPU until a provider is made. Layout of the carry folder and the
peers' block sizes: bench/README.md, "Peers: how they are carried".

Check and time every provider on the GPU machine: `python3 bench/peers_check.py` (bench/README.md).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "BLOCK",
    "DENSE_PEERS",
    "MASKED_PEERS",
    "PROVIDERS",
    "SELF_SELECTING_PEERS",
    "available",
    "block_mask_to_dense",
    "peers_dir",
    "random_block_mask",
    "reference",
    "sol_attn",
]

log = logging.getLogger("sparseflow.bench.peers")

BLOCK = 128                                   # block of the block_mask every provider receives
_REPO = Path(__file__).resolve().parents[1]
_FVK = "fastvideo_kernel/triton_kernels"      # path of the fastvideo-kernel Triton files in the carry


def peers_dir() -> Path:
    return Path(os.environ.get("SPARSEFLOW_PEERS", _REPO / ".peers"))


# -- masks and the reference ---------------------------------------------------------------------------

def random_block_mask(batch: int, heads: int, n_q: int, n_k: int, density: float, *, seed: int = 0,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, n_q, n_k) bool with exactly max(1, round(density * n_k)) key blocks per query block.

    The count is the same in every row because SLA's kernel takes one top-k for the whole launch.
    """
    keep = max(1, min(n_k, round(density * n_k)))
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(batch, heads, n_q, n_k, generator=g).argsort(dim=-1)[..., :keep]
    mask = torch.zeros(batch, heads, n_q, n_k, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.to(device)


def block_mask_to_dense(block_mask: torch.Tensor, length: int, block: int = BLOCK) -> torch.Tensor:
    """(B, H, L, L) bool token mask of a block table: for SDPA references on small shapes only."""
    dense = block_mask.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return dense[..., :length, :length]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              block_mask: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 SDPA (math backend) on upcast inputs, masked by `block_mask` if given; small shapes only."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mask = None if block_mask is None else block_mask_to_dense(block_mask, q.shape[-2])
    with sdpa_kernel([SDPBackend.MATH]):
        out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return out.to(q.dtype)


def _block_lists(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row counts (B, H, n_q) and ascending key-block indices (B, H, n_q, n_k), both int32.

    Entries past a row's count repeat valid indices of that row; kernels read only `count` of them.
    """
    counts = block_mask.sum(-1, dtype=torch.int32)
    order = torch.argsort((~block_mask).to(torch.int8), dim=-1, stable=True)
    return counts.contiguous(), order.to(torch.int32).contiguous()


def _split_blocks(block_mask: torch.Tensor) -> torch.Tensor:
    """A block-128 table as the block-64 table of the same token pairs: (B, H, 2 n_q, 2 n_k)."""
    return block_mask.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def _load_file(name: str, path: Path):
    """Import one carried source file as module `name` (no package __init__ runs)."""
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise FileNotFoundError(f"peers: {path} missing; run bench/prepare_peers.sh")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import_site(module: str):
    """Import `module` from .peers/site (unpacked wheels), putting that folder first on sys.path."""
    site = str(peers_dir() / "site")
    if site not in sys.path:
        sys.path.insert(0, site)
    return importlib.import_module(module)


def _blhd(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> ComfyUI's (B, L, H, D) contiguous layout (a copy, made at setup)."""
    return x.transpose(1, 2).contiguous()


# -- SDPA --------------------------------------------------------------------------------------------

def _sdpa_comfy(q, k, v, order: list) -> Callable[[], torch.Tensor]:
    """ComfyUI's `attention_pytorch` through `comfy.ops.scaled_dot_product_attention`: inputs in Wan's
    (B, L, H*D) layout, viewed to (B, H, L, D), SDPA under `sdpa_kernel(order, set_priority=True)`,
    output transposed back and reshaped to (B, L, H*D) (a copy, as in ComfyUI)."""
    from torch.nn.attention import sdpa_kernel

    b, h, n, d = q.shape
    qc, kc, vc = (_blhd(t).view(b, n, h * d) for t in (q, k, v))

    def fn() -> torch.Tensor:
        qs, ks, vs = (t.view(b, -1, h, d).transpose(1, 2) for t in (qc, kc, vc))
        with sdpa_kernel(order, set_priority=True):
            out = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=None, dropout_p=0.0,
                                                                   is_causal=False)
        return out.transpose(1, 2).reshape(b, -1, h * d).view(b, n, h, d).transpose(1, 2)

    return fn


def make_sdpa_default(q, k, v, block_mask=None):
    """ComfyUI 0.3.64 default attention: priority cuDNN -> Flash -> MemEfficient -> Math."""
    from torch.nn.attention import SDPBackend as S
    return _sdpa_comfy(q, k, v, [S.CUDNN_ATTENTION, S.FLASH_ATTENTION, S.EFFICIENT_ATTENTION, S.MATH])


def make_sdpa_default_newest(q, k, v, block_mask=None):
    """Newest ComfyUI comfy/ops.py (@0271a469): priority Flash -> cuDNN -> MemEfficient -> Math."""
    from torch.nn.attention import SDPBackend as S
    return _sdpa_comfy(q, k, v, [S.FLASH_ATTENTION, S.CUDNN_ATTENTION, S.EFFICIENT_ATTENTION, S.MATH])


def _sdpa_only(q, k, v, backend_name: str) -> Callable[[], torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, backend_name)

    def fn() -> torch.Tensor:
        with sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return fn


def make_sdpa_cudnn(q, k, v, block_mask=None):
    """SDPA restricted to cuDNN attention (raises if cuDNN cannot run the shape), (B, H, L, D) inputs."""
    return _sdpa_only(q, k, v, "CUDNN_ATTENTION")


def make_sdpa_flash(q, k, v, block_mask=None):
    """SDPA restricted to FlashAttention-2 (PyTorch's built-in), (B, H, L, D) inputs."""
    return _sdpa_only(q, k, v, "FLASH_ATTENTION")


# -- block-sparse peers given the same block mask ----------------------------------------------------------

_FLEX = None


def make_flex(q, k, v, block_mask):
    """torch FlexAttention (torch.compile'd once per process) with a BlockMask at block 128.

    The selected pairs are *full* blocks (no mask_mod evaluated in the kernel); the mask_mod that
    indexes the table only serves the eager fallback. Short last blocks are bounded by seq_lengths.
    """
    global _FLEX
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if _FLEX is None:
        _FLEX = torch.compile(flex_attention, dynamic=False)
    n = q.shape[-2]
    counts, indices = _block_lists(block_mask)
    table = block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return table[b, h, q_idx // BLOCK, kv_idx // BLOCK]

    mask = BlockMask.from_kv_blocks(torch.zeros_like(counts), indices, full_kv_num_blocks=counts,
                                    full_kv_indices=indices, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(n, n))
    flex = _FLEX
    return lambda: flex(q, k, v, block_mask=mask)


def make_sla(q, k, v, block_mask):
    """SLA's sparse (softmax) branch: fastvideo-kernel `triton_kernels/sla_triton.py` `_attention`
    (TurboDiffusion/thu-ml SLA kernel), BLOCK_M=128 query rows x BLOCK_N=64 keys, no padding needed.

    LUT: (B, H, ceil(L/128), topk) int32 of 64-key-block indices, ascending; topk = 2 x the block-128
    count, which must be the same in every row (SLA's topk is one constexpr per launch).
    """
    mod = _load_file("sparseflow_peer_sla_triton", peers_dir() / _FVK / "sla_triton.py")
    counts = block_mask.sum(-1)
    if int(counts.min()) != int(counts.max()):
        raise ValueError("sla: every query block must keep the same number of key blocks "
                         f"(got {int(counts.min())}..{int(counts.max())}); use random_block_mask")
    topk = 2 * int(counts.max())
    _, lut = _block_lists(block_mask.repeat_interleave(2, dim=-1))    # 128 query rows x 64-key blocks
    lut = lut[..., :topk].contiguous()

    def fn() -> torch.Tensor:
        with torch.no_grad():
            return mod._attention.apply(q, k, v, lut, lut, topk, 128, 64, None)

    return fn


def make_vsa(q, k, v, block_mask):
    """VSA's block-sparse attention: fastvideo-kernel `triton_kernels/block_sparse_attn_triton.py`
    `triton_block_sparse_attn_forward` (the Triton path of `block_sparse_attn_from_indices`), 64x64
    tiles, autotuned on its first call.

    Needs L a multiple of 64: q, k, v are zero-padded to ceil(L/128)*128 at setup, the padded keys are
    cut by `variable_block_sizes` (live tokens per 64-key block), and the padded output rows are dropped
    (a view). Index form: q2k_index (B, H, n64, n64) ascending, q2k_num (B, H, n64), int32.
    """
    mod = _load_file("sparseflow_peer_vsa_triton", peers_dir() / _FVK / "block_sparse_attn_triton.py")
    n = q.shape[-2]
    padded = block_mask.shape[-2] * BLOCK
    pad = (0, 0, 0, padded - n)
    qp, kp, vp = (torch.nn.functional.pad(t, pad).contiguous() for t in (q, k, v))
    sizes = (n - 64 * torch.arange(padded // 64, device=q.device)).clamp(0, 64).to(torch.int32)
    mask64 = _split_blocks(block_mask) & (sizes > 0)                  # drop empty 64-key blocks
    q2k_num, q2k_index = _block_lists(mask64)

    def fn() -> torch.Tensor:
        out, _ = mod.triton_block_sparse_attn_forward(qp, kp, vp, q2k_index, q2k_num, sizes)
        return out[:, :, :n]

    return fn


# -- dense INT8 and ComfyUI core's sol_attn ---------------------------------------------------------------

def make_sage(q, k, v, block_mask=None):
    """SageAttention 1.0.6 (Triton, INT8 QK, fp16 PV) called as ComfyUI 0.3.64's `attention_sage` does:
    `sageattn(q, k, v, attn_mask=None, is_causal=False, tensor_layout="NHD")` on (B, L, H, D) views,
    smooth_k at its default (True: subtracts k's mean in place, here on the provider's own copy)."""
    sage = _import_site("sageattention")
    qs, ks, vs = (_blhd(t) for t in (q, k, v))

    def fn() -> torch.Tensor:
        return sage.sageattn(qs, ks, vs, attn_mask=None, is_causal=False, tensor_layout="NHD").transpose(1, 2)

    return fn


def sol_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk_ratio: float = 0.0, tau: float = 1.3,
             extra_tokens: int = 256, scale: float | None = None) -> torch.Tensor:
    """comfy_kitchen.sol_attn exactly as core "Model Sparse Attention" calls it for Wan (COMFY_NOTES §4):
    q, k, v (B, L, H, 128) bf16; no sinks on Wan; node defaults tau 1.3 (method sol-attn, topk_ratio 0)
    and extra_tokens 256 (`token_aug`); method sla = topk_ratio keep_percent/100."""
    ck = _import_site("comfy_kitchen")
    return ck.sol_attn(q, k, v, tau=tau, scale=scale, sink_blocks=[0, 0], sink_q=[0, 0],
                       topk_ratio=topk_ratio, token_aug=extra_tokens)


def _make_sol(q, k, v, topk_ratio: float, tau: float) -> Callable[[], torch.Tensor]:
    ck = _import_site("comfy_kitchen")
    if not ck.sol_attn_is_available(q.device):
        raise RuntimeError("sol_attn: comfy_kitchen's compiled kernel is not available on this device "
                           f"({getattr(ck._cuda_backend, '_EXT_ERROR', None)})")
    qs, ks, vs = (_blhd(t) for t in (q, k, v))
    return lambda: sol_attn(qs, ks, vs, topk_ratio=topk_ratio, tau=tau).transpose(1, 2)


def make_sol_attn_topk(q, k, v, block_mask):
    """Core node, method "sla": keep_percent = the density of `block_mask` (its own block choice)."""
    return _make_sol(q, k, v, topk_ratio=float(block_mask.float().mean()), tau=1.3)


def make_sol_attn_tau(q, k, v, block_mask=None):
    """Core node, method "sol-attn" at its default tau 1.3 (adaptive, block choice included)."""
    return _make_sol(q, k, v, topk_ratio=0.0, tau=1.3)


PROVIDERS: dict[str, Callable] = {
    "sdpa_default": make_sdpa_default,
    "sdpa_default_newest": make_sdpa_default_newest,
    "sdpa_cudnn": make_sdpa_cudnn,
    "sdpa_flash": make_sdpa_flash,
    "sage": make_sage,
    "flex": make_flex,
    "sla_triton": make_sla,
    "vsa_triton": make_vsa,
    "sol_attn_topk": make_sol_attn_topk,
    "sol_attn_tau": make_sol_attn_tau,
}
DENSE_PEERS = ("sdpa_default", "sdpa_default_newest", "sdpa_cudnn", "sdpa_flash", "sage")
MASKED_PEERS = ("flex", "sla_triton", "vsa_triton")             # compute exactly the given block mask
SELF_SELECTING_PEERS = ("sol_attn_topk", "sol_attn_tau")        # choose their own blocks, approximate


def available() -> dict[str, str | None]:
    """Provider name -> None if it can run here, else the reason it cannot."""
    if not torch.cuda.is_available():
        return dict.fromkeys(PROVIDERS, "no CUDA device")
    reasons: dict[str, str | None] = dict.fromkeys(PROVIDERS)
    if not torch.backends.cudnn.is_available():
        reasons["sdpa_cudnn"] = "cuDNN not available"
    try:
        importlib.import_module("torch.nn.attention.flex_attention")
    except ImportError as e:
        reasons["flex"] = f"flex_attention: {e}"
    root = peers_dir()
    for name, path in (("sla_triton", root / _FVK / "sla_triton.py"),
                       ("vsa_triton", root / _FVK / "block_sparse_attn_triton.py"),
                       ("sage", root / "site" / "sageattention" / "core.py")):
        if not path.is_file():
            reasons[name] = f"{path} missing (run bench/prepare_peers.sh)"
    try:
        ck = _import_site("comfy_kitchen")
        if not ck.sol_attn_is_available(torch.device("cuda")):
            err = getattr(getattr(ck, "_cuda_backend", None), "_EXT_ERROR", None)
            raise RuntimeError(f"compiled sol_attn not available ({err})")
    except Exception as e:  # noqa: BLE001 - any failure to load the wheel is a reason, not a crash
        for name in SELF_SELECTING_PEERS:
            reasons[name] = f"comfy_kitchen: {type(e).__name__}: {e}"
    return reasons
