"""Which ComfyUI frontends the browser tests run against, and where their static files are. Standard library only.

Two frontends are known by name:

- ``pinned``: the ``comfyui-frontend-package`` installed with the ComfyUI tree's requirements (ComfyUI 0.3.64 pins
  1.27.10); the server serves it by default;
- ``newest``: ``comfyui-frontend-package`` ``NEWEST_VERSION`` from PyPI, the frontend users of the newest ComfyUI
  get; installed (never vendored) into ``~/.cache/sparseflow/frontend/<version>/`` and served with
  ``main.py --front-end-root <its static folder>``.

Command line (tests/browser/setup.sh): ``python3 tests/browser/frontends.py fetch`` installs the newest one into
the cache with pip (``--no-deps --target``) unless it is there, and exits 1 with the reason when it cannot.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

NEWEST_VERSION = "1.58.1"  # the newest 1.x comfyui-frontend-package on PyPI when this was written
PACKAGE = "comfyui-frontend-package"
FRONTENDS = ("pinned", "newest")
PIP_TIMEOUT_S = 300


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparseflow" / "frontend"


def _newest_static() -> Path:
    return cache_dir() / NEWEST_VERSION / "comfyui_frontend_package" / "static"


def pinned_version() -> str | None:
    """Version of the installed comfyui-frontend-package (what the server serves by default), or None."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def version(name: str) -> str | None:
    """The frontend version a name stands for, or None when it is not installed."""
    if name == "pinned":
        return pinned_version()
    if name == "newest":
        return NEWEST_VERSION if (_newest_static() / "index.html").is_file() else None
    raise ValueError(f"unknown frontend {name!r}: expected one of {', '.join(FRONTENDS)}")


def label(name: str) -> str:
    """A test id: the name and the version (``pinned-1.27.10``, ``newest-1.58.1``)."""
    return f"{name}-{NEWEST_VERSION if name == 'newest' else pinned_version() or 'missing'}"


def front_end_root(name: str) -> Path | None:
    """The ``--front-end-root`` for a frontend: None for the pinned one (the server's default)."""
    if name == "pinned":
        return None
    version(name)  # validates the name
    return _newest_static()


def missing(name: str) -> str | None:
    """Why a frontend cannot be served, in words, or None when it can."""
    if version(name) is not None:
        return None
    if name == "pinned":
        return f"{PACKAGE} is not installed (it comes with ComfyUI's requirements.txt)"
    return (f"{PACKAGE} {NEWEST_VERSION} is not at {_newest_static()}: run `bash tests/browser/setup.sh` "
            f"(or `python3 tests/browser/frontends.py fetch`)")


def fetch() -> int:
    """Install the newest frontend into the cache with pip, once; 0 when it is there afterwards."""
    if version("newest") is not None:
        print(f"frontends: {PACKAGE} {NEWEST_VERSION} already at {_newest_static()}")
        return 0
    target = cache_dir() / NEWEST_VERSION
    tmp = target.with_name(f".{NEWEST_VERSION}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--upgrade", "--target",
           str(tmp), f"{PACKAGE}=={NEWEST_VERSION}"]
    try:
        subprocess.run(cmd, check=True, timeout=PIP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        print(f"frontends: pip could not install {PACKAGE}=={NEWEST_VERSION}: {e}", file=sys.stderr)
        return 1
    shutil.rmtree(target, ignore_errors=True)  # an incomplete earlier install
    tmp.rename(target)
    if version("newest") is None:
        print(f"frontends: {PACKAGE} {NEWEST_VERSION} was installed but has no {_newest_static()}", file=sys.stderr)
        return 1
    print(f"frontends: {PACKAGE} {NEWEST_VERSION} installed at {_newest_static()}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        print("usage: python3 tests/browser/frontends.py fetch", file=sys.stderr)
        sys.exit(2)
    sys.exit(fetch())
