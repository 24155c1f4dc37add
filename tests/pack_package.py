"""The repository root as package `comfyui_sparseflow`, loaded by path the way ComfyUI loads a custom-node folder.

No `sys.path` entry names the pack: tests import the core as `comfyui_sparseflow.sparseflow` and the kernels as
`comfyui_sparseflow.kernels`, the same modules the nodes reach through their relative imports. conftest.py loads
it before any test module is collected.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "comfyui_sparseflow"
REPO = Path(__file__).resolve().parent.parent


def load_pack_package() -> ModuleType:
    """The pack's package (loaded once; importing it imports no ComfyUI module)."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        sys.modules[PACKAGE] = pack = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(pack)
    return sys.modules[PACKAGE]
