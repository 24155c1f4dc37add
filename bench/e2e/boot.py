"""Import ComfyUI 0.3.64 in-process for the end-to-end bench, and the SparseFlow pack as a package.

ComfyUI comes from `$COMFYUI_PATH`, else the carried `.comfy_e2e/` copy (bench/run_e2e_gpu.sh fills it
from /opt/ComfyUI; its own folder, because the fidelity bench keeps a smaller copy in `.comfy/`), else
/opt/ComfyUI. The peers' `.peers/site` goes on sys.path *before* ComfyUI is
imported, so `comfy/ldm/modules/attention.py` finds `sageattention` at import time and defines
`attention_sage` exactly as a user install with SageAttention does (the startup default stays
`attention_pytorch`: `--use-sage-attention` is not set). `comfy.cli_args` is never given sys.argv
(`enable_args_parsing()` is not called), so its defaults hold: on CUDA that is PyTorch SDPA attention,
NORMAL_VRAM, and the native CUDA caching allocator (main.py's cuda_malloc switch is not run, so
torch.cuda.max_memory_allocated stays exact).

The repository root is loaded as the package `comfyui_sparseflow` (tests/pack_package.py, the loader the tests
use; as ComfyUI's custom-node loader does, by path) when this module is imported; its nodes are reached as
`comfyui_sparseflow.nodes.*`, beside ComfyUI's own top-level `nodes.py`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

__all__ = ["REPO", "comfy_root", "comfyui_tree", "git_commit", "import_comfy", "import_pack", "peers_site"]

log = logging.getLogger("sparseflow.bench.e2e.boot")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
load_pack_package = __import__("pack_package").load_pack_package
load_pack_package()


def comfy_root() -> Path:
    """The ComfyUI root to import: $COMFYUI_PATH, else REPO/.comfy_e2e, else /opt/ComfyUI."""
    needed = ("comfy/sd.py", "comfy_api/latest/__init__.py", "nodes.py")
    for cand in (os.environ.get("COMFYUI_PATH"), REPO / ".comfy_e2e", "/opt/ComfyUI"):
        if cand and all((Path(cand) / f).is_file() for f in needed):
            return Path(cand)
    raise RuntimeError("e2e: no ComfyUI found (set COMFYUI_PATH, or run bench/run_e2e_gpu.sh prepare to fill "
                       ".comfy_e2e/)")


def peers_site() -> Path:
    return Path(os.environ.get("SPARSEFLOW_PEERS", REPO / ".peers")) / "site"


def _stub_av() -> None:
    """A placeholder `av` (PyAV) when it is not installed: the GPU image lacks it and its wheel does not fit
    the carry beside the peers. `comfy_api.latest` (which nodes/patch.py imports for `io`) imports av and
    names `av.container.InputContainer` / `av.subtitles.stream.SubtitleStream` in annotations only; video
    decoding never runs in this bench. Bench-only: the node pack itself is never given this stub."""
    try:
        importlib.import_module("av")
        return
    except ImportError:
        pass
    names = {"av": None, "av.container": "InputContainer", "av.subtitles": None,
             "av.subtitles.stream": "SubtitleStream"}
    for name, cls in names.items():
        mod = ModuleType(name)
        mod.__path__ = []  # a package, so the submodules resolve
        if cls is not None:
            setattr(mod, cls, type(cls, (), {}))
        sys.modules[name] = mod
    sys.modules["av"].container = sys.modules["av.container"]
    sys.modules["av"].subtitles = sys.modules["av.subtitles"]
    sys.modules["av.subtitles"].stream = sys.modules["av.subtitles.stream"]
    log.warning("e2e: PyAV (av) is not installed; a placeholder module stands in (video I/O is never used here)")


def import_comfy(cpu: bool) -> SimpleNamespace:
    """Import ComfyUI's sampling stack; `cpu` forces ComfyUI's CPU mode (the --tiny development path)."""
    root = comfy_root()
    site = peers_site()
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for name in ("comfy", "nodes", "folder_paths"):
        mod = sys.modules.get(name)
        if mod is not None and not str(getattr(mod, "__file__", "") or "").startswith(str(root)):
            raise RuntimeError(f"e2e: module {name!r} already imported from {mod.__file__}, not from {root}")
    _stub_av()
    import comfy.cli_args

    if cpu:
        comfy.cli_args.args.cpu = True
    ns = SimpleNamespace(root=root)
    for attr, name in (("model_management", "comfy.model_management"), ("sd", "comfy.sd"),
                       ("sample", "comfy.sample"), ("samplers", "comfy.samplers"),
                       ("patcher_extension", "comfy.patcher_extension"), ("attention", "comfy.ldm.modules.attention"),
                       ("wan_model", "comfy.ldm.wan.model"), ("torch_compile", "comfy_api.torch_helpers")):
        setattr(ns, attr, importlib.import_module(name))
    version_file = root / "comfyui_version.py"
    ns.version = version_file.read_text().split('"')[1] if version_file.is_file() else "unknown"
    log.info("ComfyUI %s from %s, device %s, sage importable: %s", ns.version, root,
             ns.model_management.get_torch_device(), ns.attention.SAGE_ATTENTION_IS_AVAILABLE)
    return ns


def import_pack() -> ModuleType:
    """The repository root as package `comfyui_sparseflow` (loaded when this module was imported)."""
    return load_pack_package()


def git_commit() -> str:
    """Short hash of the repository's HEAD, or "unknown"."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def comfyui_tree(comfy) -> str:
    """Which ComfyUI tree runs: $SPARSEFLOW_E2E_TREE (bench/run_e2e_gpu.sh sets it), else "newest-overlay" when the
    Wan forward passes AttentionTensorContainers (../shared/comfyui/newest-overlay), else ComfyUI's version."""
    named = os.environ.get("SPARSEFLOW_E2E_TREE")
    if named:
        return named
    return "newest-overlay" if hasattr(comfy.attention, "AttentionTensorContainer") else comfy.version
