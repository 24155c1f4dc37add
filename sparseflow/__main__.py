"""`python -m sparseflow` (run from the pack's root folder): see sparseflow/cli.py.

Run this way, `sparseflow` is a top-level package, but the core reaches the kernels through the pack's own
package (`..kernels`). So the pack root is loaded as package `comfyui_sparseflow`, the way ComfyUI loads a
custom-node folder (by path, no `sys.path` edit), and the CLI runs from there: every module it uses, kernels
included, is this pack's, whatever else is installed under the names `sparseflow` or `kernels`.
"""

import importlib.util
import sys
from pathlib import Path

PACKAGE = "comfyui_sparseflow"


def _pack_cli():
    if __package__ and "." in __package__:  # already inside the pack's package
        return importlib.import_module(f"{__package__.rpartition('.')[0]}.sparseflow.cli")
    if PACKAGE not in sys.modules:
        root = Path(__file__).resolve().parent.parent
        spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        sys.modules[PACKAGE] = pack = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(pack)
    return importlib.import_module(f"{PACKAGE}.sparseflow.cli")


sys.exit(_pack_cli().main())
