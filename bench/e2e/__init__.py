"""Helpers of bench/e2e_comfy.py: ComfyUI import, full-size Wan checkpoints, attention overrides, timing.

Bench code only: it imports ComfyUI (from the git-ignored carry folder .comfy/ on the GPU machine, or
$COMFYUI_PATH) and the measuring-only peers in .peers/; nothing here is part of the node pack.
"""
