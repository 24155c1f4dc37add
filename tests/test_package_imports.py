"""The core stays framework-free: importing sparseflow (and kernels) never imports ComfyUI."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules_after_import(stmt: str) -> set[str]:
    """ComfyUI modules in sys.modules after loading the pack's package (tests/pack_package.py) and running stmt."""
    code = (f"import sys; sys.path.insert(0, 'tests'); import pack_package; pack_package.load_pack_package(); {stmt}; "
            "print('\\n'.join(m for m in sys.modules if m.split('.')[0] in "
            "('comfy', 'comfy_api', 'comfy_extras', 'folder_paths', 'nodes', 'execution', 'server')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(filter(None, out.stdout.splitlines()))


def test_sparseflow_core_imports_no_comfyui_module():
    stmt = "; ".join(f"import comfyui_sparseflow.sparseflow.{m}" for m in (
        "cli", "calibrate", "masks", "reference", "telemetry", "render", "synthetic", "schedule", "routing",
        "compare", "target_search"))
    assert _modules_after_import(stmt) == set()


def test_kernels_and_ops_import_no_comfyui_module():
    assert _modules_after_import("import comfyui_sparseflow.sparseflow.ops, comfyui_sparseflow.kernels") == set()


def test_no_source_file_in_core_or_kernels_mentions_a_comfy_import():
    bad = []
    for folder in ("sparseflow", "kernels"):
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                s = line.strip()
                if s.startswith(("import comfy", "from comfy", "import folder_paths", "from folder_paths",
                                 "from nodes", "import nodes")):
                    bad.append(f"{path.relative_to(ROOT)}: {s}")
    assert not bad, bad


def _repo_python_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored .py files (git-ignored carry folders hold others' code)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:  # not a git checkout (e.g. an installed copy): scan our own folders only
        return [p for d in ("sparseflow", "kernels", "nodes", "bench", "tests") for p in (ROOT / d).rglob("*.py")]
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).exists()]


def test_nothing_in_the_repo_loads_pickles():
    bad = []
    for path in _repo_python_files():
        if path.parts[-2:] == ("tests", "test_routing.py"):
            continue
        text = path.read_text()
        for needle in ("torch.load(", "pickle.load", "import pickle", "cPickle"):
            if needle in text and path.name not in ("test_package_imports.py", "test_routing_fuzz.py"):
                bad.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not bad, bad
