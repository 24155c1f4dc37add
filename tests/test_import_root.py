"""One import root (issue 18): with decoy top-level `kernels` and `sparseflow` packages ahead on sys.path (as PyPI's
`kernels`, Hugging Face's kernel hub, would be), the pack still imports only its own modules: in ComfyUI's own
custom-node loader (`nodes.load_custom_node`, which runs `comfy_entrypoint()`) and in `python -m sparseflow`.

Each decoy records who imported it and then raises, so a pack that reached a top-level name fails here even where
it swallows the ImportError (the op's backend registry turns an import error into a refused backend).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_env import comfy_path, requires_comfy
from comfyui_sparseflow.sparseflow.routing import routing_preset
from comfyui_sparseflow.sparseflow.routing_file import save_routing

REPO = Path(__file__).resolve().parent.parent
# every node id the pack declares (node_id="..." in nodes/), read from the source, not from the loader under test
NODE_IDS = sorted(re.findall(r'node_id="(\w+)"', "".join(p.read_text() for p in (REPO / "nodes").glob("*.py"))))
PACK = "comfyui_sparseflow"  # the name sparseflow/__main__.py and tests/pack_package.py load the pack under

DECOY = '''import os, traceback
with open(os.environ["SPARSEFLOW_DECOY_LOG"], "a") as f:
    f.write(f"{__name__} imported from {__file__}:\\n" + "".join(traceback.format_stack()) + "\\n")
raise ImportError(f"DECOY {__name__} at {__file__} was imported: the pack reached a top-level name")
'''

# The pack's three lazy kernel imports, each reached through its backend registry (these catch import errors).
PROBE = '''
def probe(name, repo):
    import importlib, os, sys
    mods = [importlib.import_module(f"{name}.sparseflow.{m}") for m in ("ops", "prologue", "residual_norm")]
    fns = [m._triton_fn() for m in mods]
    repo = os.path.realpath(repo)
    files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
    strays = sorted(n for n, f in files.items() if isinstance(f, str) and os.path.isabs(f)
                    and os.path.realpath(f).startswith(repo + os.sep) and n != name and not n.startswith(name + "."))
    return {"fn_modules": [getattr(f, "__module__", None) for f in fns],
            "errors": [m._triton_import.get("error") for m in mods], "strays": strays,
            "top_level": {n: os.path.realpath(sys.modules[n].__file__ or "?") for n in ("kernels", "sparseflow")
                          if n in sys.modules}}
'''

LOADER = PROBE + '''
import asyncio, json, sys
repo, comfy_root, decoy, pack_dir = sys.argv[1:5]
sys.path.insert(0, comfy_root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import nodes  # ComfyUI's nodes.py
sys.path.insert(0, decoy)  # ahead of everything, the pack's folder and ComfyUI's root included
ok = asyncio.run(nodes.load_custom_node(pack_dir, module_parent="custom_nodes"))
name = pack_dir.replace(".", "_x_")  # the module name 0.3.64's loader gives a custom-node folder
result = probe(name, repo)
result.update(ok=ok, name=name, nodes=sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("SparseFlow")))
print("RESULT " + json.dumps(result))
'''

CLI = PROBE + '''
import json, runpy, sys
repo = sys.argv[1]
sys.argv = ["sparseflow", "inspect", sys.argv[2]]
try:
    runpy.run_module("sparseflow", run_name="__main__", alter_sys=True)  # what `python -m sparseflow` does
except SystemExit as e:
    code = e.code
result = probe("comfyui_sparseflow", repo)
result.update(exit=code)
print("RESULT " + json.dumps(result))
'''


@pytest.fixture
def decoys(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(decoy dir with `kernels` and `sparseflow`, decoy dir with `kernels` only, the log they write to)."""
    both, only_kernels = tmp_path / "decoys", tmp_path / "decoy_kernels"
    for folder, names in ((both, ("kernels", "sparseflow")), (only_kernels, ("kernels",))):
        for name in names:
            (folder / name).mkdir(parents=True)
            (folder / name / "__init__.py").write_text(DECOY)
    return both, only_kernels, tmp_path / "decoy.log"


def _run(code_or_args: list[str], log: Path, cwd: Path, pythonpath: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPARSEFLOW_DECOY_LOG=str(log), PYTHONPATH=pythonpath, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, *code_or_args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _result(proc: subprocess.CompletedProcess, log: Path) -> dict:
    decoy_log = log.read_text() if log.exists() else ""
    assert not decoy_log, f"a decoy was imported:\n{decoy_log}"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def _assert_own_modules(result: dict, name: str, cli: bool = False) -> None:
    """The three kernel entry points are the pack's; nothing top-level named `kernels`; no file of the pack under
    another name, except (CLI) the `sparseflow` package `python -m sparseflow` starts from, which is ours."""
    assert result["errors"] == [None, None, None], result["errors"]
    assert result["fn_modules"] == [f"{name}.kernels.launch", f"{name}.kernels.norm_rope",
                                    f"{name}.kernels.residual_norm"]
    top, strays = result["top_level"], result["strays"]
    if cli:
        assert top.pop("sparseflow") == str(REPO.resolve() / "sparseflow" / "__init__.py")
        strays = [n for n in strays if n.partition(".")[0] != "sparseflow"]
    assert top == {}, f"top-level {top} imported"
    assert strays == [], f"the pack's files imported under other names: {strays}"


@pytest.fixture
def routing_file(tmp_path: Path) -> Path:
    return save_routing(routing_preset("alternating", 2, 3), tmp_path / "decoy_test.safetensors")


@requires_comfy
def test_comfyui_loader_imports_the_packs_own_kernels_past_decoys(decoys, tmp_path):
    both, _, log = decoys
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / "ComfyUI-SparseFlow").symlink_to(REPO, target_is_directory=True)
    proc = _run(["-c", LOADER, str(REPO), str(comfy_path()), str(both), str(custom_nodes / "ComfyUI-SparseFlow")],
                log, tmp_path, pythonpath="")
    result = _result(proc, log)
    assert result["ok"] is True and sorted(result["nodes"]) == NODE_IDS, result
    _assert_own_modules(result, result["name"])


def test_cli_from_the_pack_root_ignores_decoys_on_pythonpath(decoys, routing_file):
    both, _, log = decoys
    proc = _run(["-m", "sparseflow", "inspect", str(routing_file)], log, REPO, pythonpath=str(both))
    assert proc.returncode == 0 and "2x3 (layers x heads)" in proc.stdout, proc.stdout + proc.stderr
    result = _result(_run(["-c", CLI, str(REPO), str(routing_file)], log, REPO, str(both)), log)
    assert result["exit"] == 0
    _assert_own_modules(result, PACK, cli=True)


def test_cli_with_a_decoy_kernels_ahead_of_the_pack_root(decoys, routing_file, tmp_path):
    _, only_kernels, log = decoys
    path = os.pathsep.join([str(only_kernels), str(REPO)])  # `kernels` resolves to the decoy first
    result = _result(_run(["-c", CLI, str(REPO), str(routing_file)], log, tmp_path, path), log)
    assert result["exit"] == 0
    _assert_own_modules(result, PACK, cli=True)
