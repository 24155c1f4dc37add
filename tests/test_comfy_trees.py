"""Which ComfyUI the tests use (tests/comfy_trees.py, tests/comfy_env.py), on a fake ../shared: each tree is a fresh
writable copy, the newest tree is 0.3.64 with the overlay on top, the pinned release is cloned when ../shared is
absent, and the known newest-tree failures name tests that exist."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import comfy_env
import comfy_trees
import pytest
from newest_known_failures import NEWEST_XFAILS

REPO = Path(__file__).resolve().parent.parent


def _fake_comfy(root: Path, version: str) -> Path:
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("# main\n")
    (root / "requirements.txt").write_text("aiohttp\n")
    (root / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    (root / "comfy" / "model_patcher.py").write_text("OLD = 1\n")
    return root


@pytest.fixture
def shared(tmp_path, monkeypatch) -> Path:
    """A read-only fake ../shared/comfyui with 0.3.64 and the newest overlay; the process's copies forgotten."""
    root = tmp_path / "shared" / "comfyui"
    _fake_comfy(root / "0.3.64", "0.3.64")
    overlay = root / "newest-overlay" / "files" / "comfy"
    overlay.mkdir(parents=True)
    (overlay / "model_patcher.py").write_text("NEW = 1\n")
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(path.stat().st_mode & ~0o222)
    monkeypatch.setattr(comfy_trees, "SHARED", root)
    monkeypatch.setattr(comfy_trees, "_copies", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("COMFYUI_PATH", "")  # recorded, so what comfy_path() writes there is undone too
    monkeypatch.delenv("COMFYUI_PATH")
    yield root
    for path in root.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)


def test_each_tree_is_a_fresh_writable_copy_and_newest_has_the_overlay_on_top(shared):
    old, new = comfy_trees.writable_copy("0.3.64"), comfy_trees.writable_copy("newest")
    assert old != new and comfy_trees.writable_copy("newest") == new  # one copy per tree and process
    assert (old / "comfy" / "model_patcher.py").read_text() == "OLD = 1\n"
    assert (new / "comfy" / "model_patcher.py").read_text() == "NEW = 1\n"
    assert (new / "main.py").is_file() and not new.is_relative_to(shared)
    (new / "models" / "sparseflow").mkdir(parents=True)  # ComfyUI writes beside itself
    (new / "comfy" / "model_patcher.py").write_text("changed\n")
    assert (shared / "newest-overlay" / "files" / "comfy" / "model_patcher.py").read_text() == "NEW = 1\n"


def test_comfy_path_prefers_comfyui_path_and_names_it_when_it_is_not_a_checkout(shared, tmp_path, monkeypatch):
    monkeypatch.setenv(comfy_trees.TREE_ENV, "newest")
    assert comfy_env.comfy_path() == comfy_trees.writable_copy("newest")
    assert os.environ["COMFYUI_PATH"] == str(comfy_trees.writable_copy("newest"))  # subprocesses use the same tree
    assert "tree newest (ComfyUI 0.3.64)" in comfy_env.tree_label() and comfy_env.on_newest_tree()
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    assert comfy_env.comfy_path() is None
    assert f"COMFYUI_PATH={tmp_path} (no main.py)" in comfy_env.missing_reason()


def test_without_shared_the_newest_tree_is_missing_and_0364_comes_from_a_clone(shared, tmp_path, monkeypatch):
    monkeypatch.setattr(comfy_trees, "SHARED", tmp_path / "absent")
    assert comfy_trees.layers("0.3.64") is None and comfy_trees.writable_copy("newest") is None
    assert "newest-overlay" in comfy_trees.missing("newest") and "v0.3.64" in comfy_trees.missing("0.3.64")
    monkeypatch.setattr(comfy_trees, "CLONE_URL", str(tmp_path / "no-such-repo"))
    assert comfy_trees.clone_pinned() is None  # git fails: said, not raised
    upstream = _fake_comfy(tmp_path / "upstream", "0.3.64")
    git = ["git", "-C", str(upstream), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "release"], ["tag", comfy_trees.PINNED_TAG]):
        subprocess.run(git + args, check=True, capture_output=True)
    monkeypatch.setattr(comfy_trees, "CLONE_URL", str(upstream))
    clone = comfy_trees.clone_pinned()
    assert clone == comfy_trees.cache_dir() / f"ComfyUI-{comfy_trees.PINNED_TAG}" and (clone / "main.py").is_file()
    copy = comfy_trees.writable_copy("0.3.64")
    assert (copy / "main.py").is_file() and not (copy / ".git").exists()
    assert comfy_trees.layers("newest") is None  # the overlay goes over ../shared's 0.3.64 only


def test_dev_sh_asks_for_the_requirements_file_and_gets_the_reason_when_there_is_none(shared, tmp_path):
    def ask(*args: str) -> subprocess.CompletedProcess:
        code = ("import sys, comfy_trees; from pathlib import Path; comfy_trees.SHARED = Path(sys.argv[1]); "
                "sys.exit(comfy_trees.main(sys.argv[2:]))")
        return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO / "tests", capture_output=True, text=True,
                              env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")), timeout=60)

    out = ask(str(shared), "requirements", "newest")
    assert out.returncode == 0 and out.stdout.strip() == str(shared / "0.3.64" / "requirements.txt")
    out = ask(str(tmp_path / "absent"), "requirements", "newest")
    assert out.returncode == 1 and "newest-overlay" in out.stderr
    assert ask(str(shared), "requirements", "0.4").returncode == 2


def test_every_known_newest_failure_names_a_test_that_exists():
    for node_id, reason in NEWEST_XFAILS.items():
        path, _, name = node_id.partition("::")
        assert reason and (REPO / path).is_file(), node_id
        tree = ast.parse((REPO / path).read_text())
        funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name.partition("[")[0] in funcs, f"{node_id}: no such test (renamed? update newest_known_failures)"
