"""SparseFlow's ComfyUI nodes: thin `io.ComfyNode` classes over `sparseflow/` (the logic lives there).

ComfyUI loads this pack as a package named after its folder, while the core (`sparseflow`, `kernels`) imports
itself by its top-level names (and registers the `sparseflow::attention` torch op once, under that name). So
the pack root must be importable: `ensure_core_importable()` appends it to `sys.path` (last, so ComfyUI's own
`nodes`, `utils`, ... keep priority) when `sparseflow` is not already importable from this pack.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

__all__ = ["PACK_ROOT", "ensure_core_importable"]

log = logging.getLogger("sparseflow.nodes")

PACK_ROOT = Path(__file__).resolve().parent.parent


def ensure_core_importable() -> None:
    """Make `import sparseflow` resolve to this pack's core; raise ImportError if another one shadows it."""
    spec = importlib.util.find_spec("sparseflow")
    if spec is None:
        sys.path.append(str(PACK_ROOT))
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("sparseflow")
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if origin is None or origin.parent.parent != PACK_ROOT:
        raise ImportError(f"SparseFlow: 'sparseflow' resolves to {origin}, not to this pack's core at "
                          f"{PACK_ROOT / 'sparseflow'}; another package named 'sparseflow' shadows it")


ensure_core_importable()
