"""Tests that fail on the newest-shape ComfyUI tree today because the pack does not handle that tree yet (issue 17).

conftest.py marks each as a strict xfail when this process tests the `newest` tree (tests/comfy_trees.py), so the
suite stays green there while the list says exactly what is missing; once the pack handles one, its test passes,
the strict xfail turns into a failure, and its line here must go. tests/test_comfy_trees.py checks that every entry
names a test that exists (a renamed test must not leave a stale line). Measured with
`SPARSEFLOW_COMFY_TREE=newest python3 -m pytest -m comfyui`: none today (issue 17 had 21).
"""

NEWEST_XFAILS: dict[str, str] = {}
