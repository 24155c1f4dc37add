"""Which ComfyUI tree the tests run against, and a writable copy of it. Standard library only (dev.sh runs it first).

Two trees are known by name:

- ``0.3.64``: ComfyUI 0.3.64 as released, from ``../shared/comfyui/0.3.64`` beside the repository, else from a
  shallow clone of the ``v0.3.64`` tag (made only when asked, ``--clone``, where the network allows);
- ``newest``: that same 0.3.64 tree with ``../shared/comfyui/newest-overlay/files`` copied over it (the newest
  ComfyUI's attention, Wan forwards, clone and prepare_state; ../shared/comfyui/README.md).

ComfyUI writes beside itself (models/, user/, output/ ...) and ../shared is read-only in CI, so a named tree is
never used in place: each process gets its own fresh copy in a temp folder (16 MB, well under a second), removed
at exit, so nothing one run saves is seen by the next. ``$COMFYUI_PATH``, when set, names a checkout to use as is.

Command line (dev.sh): ``python3 tests/comfy_trees.py requirements TREE [--clone]`` prints the tree's
requirements.txt, or exits 1 with the reason on stderr when the tree cannot be had.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "comfyui"
TREES = ("0.3.64", "newest")
TREE_ENV = "SPARSEFLOW_COMFY_TREE"
PINNED_TAG = "v0.3.64"
CLONE_URL = "https://github.com/comfyanonymous/ComfyUI"
CLONE_TIMEOUT_S = 180

_copies: dict[str, Path] = {}


def tree_name() -> str:
    """The tree this process tests: ``$SPARSEFLOW_COMFY_TREE`` (dev.sh sets it), else 0.3.64."""
    name = os.environ.get(TREE_ENV, TREES[0])
    if name not in TREES:
        raise ValueError(f"{TREE_ENV}={name!r}: expected one of {', '.join(TREES)}")
    return name


def cache_dir() -> Path:
    """Where a clone of the pinned release is kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparseflow" / "comfyui"


def _clone_dir() -> Path:
    return cache_dir() / f"ComfyUI-{PINNED_TAG}"


def layers(tree: str) -> list[Path] | None:
    """The folders copied, in order, to make ``tree``; None when one of them is absent."""
    base = SHARED / "0.3.64"
    if not (base / "main.py").is_file():
        base = _clone_dir()
        if tree != "0.3.64" or not (base / "main.py").is_file():
            return None
    if tree == "0.3.64":
        return [base]
    overlay = SHARED / "newest-overlay" / "files"
    return [base, overlay] if base.parent == SHARED and overlay.is_dir() else None


def missing(tree: str) -> str:
    """Why ``tree`` cannot be had, in words."""
    if tree == "newest":
        return f"the newest-shape tree needs {SHARED}/0.3.64 and {SHARED}/newest-overlay/files (not found)"
    return (f"no ComfyUI: $COMFYUI_PATH is not set, {SHARED}/0.3.64 is absent and no clone of {PINNED_TAG} is at "
            f"{_clone_dir()} (bash dev.sh test tries to make one)")


def clone_pinned() -> Path | None:
    """A shallow clone of ComfyUI's pinned release in the cache (made once); None when git or the network fails."""
    dest = _clone_dir()
    if (dest / "main.py").is_file():
        return dest
    if shutil.which("git") is None:
        print("comfy_trees: git not found: cannot clone ComfyUI", file=sys.stderr)
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="clone-", dir=dest.parent))
    cmd = ["git", "clone", "-q", "--depth", "1", "--branch", PINNED_TAG, CLONE_URL, str(tmp / "ComfyUI")]
    try:
        subprocess.run(cmd, check=True, timeout=CLONE_TIMEOUT_S, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
        (tmp / "ComfyUI").rename(dest)
        return dest
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        print(f"comfy_trees: cloning {CLONE_URL} at {PINNED_TAG} failed: {e}", file=sys.stderr)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def writable_copy(tree: str) -> Path | None:
    """This process's fresh copy of ``tree`` (made on first call, removed at exit), or None when it cannot be had."""
    if tree in _copies:
        return _copies[tree]
    sources = layers(tree)
    if sources is None:
        return None
    dest = Path(tempfile.mkdtemp(prefix=f"sparseflow_comfyui_{tree}_")) / "ComfyUI"
    atexit.register(shutil.rmtree, dest.parent, True)
    for src in sources:
        shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns(".git", "__pycache__"))
    for path in [dest, *dest.rglob("*")]:  # the shared trees are laid without write bits
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    _copies[tree] = dest
    return dest


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "requirements" or argv[1] not in TREES:
        print(f"usage: python3 tests/comfy_trees.py requirements {{{'|'.join(TREES)}}} [--clone]", file=sys.stderr)
        return 2
    tree = argv[1]
    if layers(tree) is None and "--clone" in argv[2:] and tree == "0.3.64":
        clone_pinned()
    sources = layers(tree)
    if sources is None:
        print(f"comfy_trees: {missing(tree)}", file=sys.stderr)
        return 1
    print(sources[0] / "requirements.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
