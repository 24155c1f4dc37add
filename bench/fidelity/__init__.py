"""Fidelity bench: a small Wan DiT trained here, and what each SparseFlow / sol_attn setting costs in quality.

Its modules import the pack as `comfyui_sparseflow`, loaded here once by tests/pack_package.py's loader.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
__import__("pack_package").load_pack_package()
