"""SparseFlow's ComfyUI nodes: thin `io.ComfyNode` classes over `sparseflow/` (the logic lives there).

The whole pack is one package, the folder ComfyUI loads (named after that folder): nodes reach the core and the
kernels through relative imports (`..sparseflow`, `..kernels`), so no other installed package with a top-level
name `sparseflow` or `kernels` (PyPI has one) can stand in for them, and nothing edits `sys.path`.
"""
