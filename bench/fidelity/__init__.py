"""Fidelity bench: a small Wan DiT trained here, and what each SparseFlow / sol_attn setting costs in quality."""
