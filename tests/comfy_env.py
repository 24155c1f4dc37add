"""Locate and import a real ComfyUI install for tests, with CPU forced and pytest's argv left alone.

ComfyUI is never vendored. The tests use ``$COMFYUI_PATH`` when it is set, else a fresh writable copy of the
named tree ``$SPARSEFLOW_COMFY_TREE`` (0.3.64 or newest, from ../shared beside the repository: tests/comfy_trees.py).
A test that needs ComfyUI carries the ``comfyui`` marker (``requires_comfy``); conftest.py skips it loudly when no
ComfyUI can be had, or fails it when ``SPARSEFLOW_REQUIRE_COMFYUI=1`` (dev.sh sets that whenever it found one).

Why this works without touching pytest's argv: ``comfy/cli_args.py`` parses ``sys.argv`` only when
``comfy.options.enable_args_parsing()`` was called (``main.py`` does, library imports do not); otherwise it
runs ``parser.parse_args([])``, so ``args`` holds the defaults. ``comfy.model_management`` reads ``args.cpu``
once, at import, to set ``cpu_state``; we set it before that import.

Name clashes: ComfyUI's root holds top-level modules named ``nodes``, ``utils``, ``app`` and ``tests``.
Its root goes first on ``sys.path``, so ``import nodes`` means ComfyUI's ``nodes.py`` from then on; code of
this repository must reach its own ``nodes/`` package through a package-qualified or relative import.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import comfy_trees
import pytest

REQUIRE_ENV = "SPARSEFLOW_REQUIRE_COMFYUI"
ISSUE_NEWEST = "issue 17: the pack does not yet handle the newest ComfyUI"

log = logging.getLogger("sparseflow.tests.comfy_env")

_imported: SimpleNamespace | None = None


def comfy_path() -> Path | None:
    """The ComfyUI root: ``$COMFYUI_PATH`` when set (None when it has no main.py), else this process's writable
    copy of the named tree (None when it cannot be had). The copy's path is put in ``$COMFYUI_PATH`` so that
    subprocesses (servers, benches) use the same tree."""
    wanted = os.environ.get("COMFYUI_PATH")
    if wanted:
        root = Path(wanted).expanduser()
        return root if (root / "main.py").is_file() else None
    root = comfy_trees.writable_copy(comfy_trees.tree_name())
    if root is not None:
        os.environ["COMFYUI_PATH"] = str(root)
    return root


def tree_label() -> str:
    """Which ComfyUI this process tests, for the report header and failure messages."""
    root = comfy_path()
    if root is None:
        return f"none ({missing_reason()})"
    version_file = root / "comfyui_version.py"
    version = version_file.read_text().split('"')[1] if version_file.is_file() else "unknown version"
    return f"tree {comfy_trees.tree_name()} (ComfyUI {version}) at {root}"


def on_newest_tree() -> bool:
    """Whether this process tests the newest-shape tree (0.3.64 + ../shared/comfyui/newest-overlay)."""
    return comfy_trees.tree_name() == "newest"


def missing_reason() -> str:
    """The loud message used when ComfyUI cannot be found."""
    wanted = os.environ.get("COMFYUI_PATH")
    where = (f"ComfyUI not found at COMFYUI_PATH={wanted} (no main.py)" if wanted
             else comfy_trees.missing(comfy_trees.tree_name()))
    return (f"{where}: set COMFYUI_PATH to a ComfyUI >= 0.3.60 checkout or put ../shared beside the repository; "
            f"set {REQUIRE_ENV}=1 to make this a failure instead of a skip")


def _check_module_origin(name: str, root: Path) -> None:
    """Refuse to go on if a same-named module from elsewhere is already imported (e.g. this repo's nodes/)."""
    mod = sys.modules.get(name)
    if mod is None:
        return
    origin = getattr(mod, "__file__", None) or ""
    if origin and not Path(origin).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(
            f"module {name!r} is already imported from {origin}, which shadows ComfyUI's {name!r} at {root}; "
            "import this repository's packages through a package-qualified name instead"
        )


def import_comfy(force_cpu: bool = True) -> SimpleNamespace:
    """Import ComfyUI's sampling stack once and return its modules as a namespace.

    The namespace has: ``root, sd, sample, samplers, model_management, model_patcher, patcher_extension,
    supported_models, clip_vision, utils, attention, wan_model, folder_paths, nodes``.
    Raises RuntimeError when ComfyUI is absent or ``comfy.model_management`` was already imported with
    another device choice (it fixes the device at import time).
    """
    global _imported
    if _imported is not None:
        if force_cpu and not _imported.model_management.cpu_mode():
            raise RuntimeError("ComfyUI was already imported without CPU forcing in this process")
        return _imported

    root = comfy_path()
    if root is None:
        raise RuntimeError(missing_reason())
    for name in ("nodes", "folder_paths", "utils", "comfy"):
        _check_module_origin(name, root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))

    import comfy.cli_args
    import comfy.options  # noqa: F401  (args_parsing stays False: argv is not parsed)

    already = "comfy.model_management" in sys.modules
    if force_cpu:
        comfy.cli_args.args.cpu = True
    mm = importlib.import_module("comfy.model_management")
    if force_cpu and already and not mm.cpu_mode():
        raise RuntimeError("comfy.model_management was imported before import_comfy(force_cpu=True)")

    ns = SimpleNamespace(
        root=root,
        model_management=mm,
        sd=importlib.import_module("comfy.sd"),
        sample=importlib.import_module("comfy.sample"),
        samplers=importlib.import_module("comfy.samplers"),
        model_patcher=importlib.import_module("comfy.model_patcher"),
        patcher_extension=importlib.import_module("comfy.patcher_extension"),
        supported_models=importlib.import_module("comfy.supported_models"),
        clip_vision=importlib.import_module("comfy.clip_vision"),
        utils=importlib.import_module("comfy.utils"),
        attention=importlib.import_module("comfy.ldm.modules.attention"),
        wan_model=importlib.import_module("comfy.ldm.wan.model"),
        folder_paths=importlib.import_module("folder_paths"),
        nodes=importlib.import_module("nodes"),
    )
    version_file = root / "comfyui_version.py"
    ns.version = version_file.read_text().split('"')[1] if version_file.is_file() else "unknown"
    log.info("using ComfyUI %s at %s (device %s)", ns.version, root, mm.get_torch_device())
    _imported = ns
    return ns


def require_comfy() -> SimpleNamespace:
    """Import ComfyUI or skip the calling test loudly (fail instead when SPARSEFLOW_REQUIRE_COMFYUI=1)."""
    skip_without_comfy()
    return import_comfy()


def skip_without_comfy() -> None:
    """Skip the calling test loudly when no ComfyUI can be had; fail instead when SPARSEFLOW_REQUIRE_COMFYUI=1."""
    if comfy_path() is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(missing_reason(), pytrace=False)
        pytest.skip(missing_reason())


# Every test that needs ComfyUI carries this marker (conftest.py skips or fails it when ComfyUI is missing);
# dev.sh runs the marked tests a second time against the newest-shape tree (pytest -m comfyui).
requires_comfy = pytest.mark.comfyui


@pytest.fixture(scope="session")
def comfy() -> SimpleNamespace:
    """Session fixture: the imported ComfyUI namespace, or a loud skip."""
    return require_comfy()
