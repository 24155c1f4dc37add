"""Session-wide test set-up: the pack imported as one package, the ``comfyui`` marker (skip or fail without
ComfyUI), which ComfyUI tree this process tests, and a loud summary of skipped tests."""

import os

import comfy_env
import pytest
import torch
from newest_known_failures import NEWEST_XFAILS
from pack_package import load_pack_package

os.environ.setdefault("SPARSEFLOW_TESTING", "1")
if not torch.cuda.is_available():
    # kernels run under Triton's CPU interpreter here; set before any test module imports them (the flag is read
    # when a kernel is decorated and when kernels/configs.py is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")
load_pack_package()


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs a real ComfyUI (skipped loudly without one, failed when "
                                       f"{comfy_env.REQUIRE_ENV}=1); dev.sh runs these once per ComfyUI tree")


def pytest_report_header(config):
    return f"SparseFlow: ComfyUI {comfy_env.tree_label()}"


def pytest_collection_modifyitems(config, items):
    """On the newest-shape tree, the tests the pack cannot pass there yet are strict xfails (newest_known_failures)."""
    if not comfy_env.on_newest_tree():
        return
    for item in items:
        reason = NEWEST_XFAILS.get(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=f"{comfy_env.ISSUE_NEWEST}: {reason}", strict=True))


def pytest_runtest_setup(item):
    if item.get_closest_marker("comfyui") is not None:
        comfy_env.skip_without_comfy()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line(f"SparseFlow: ComfyUI {comfy_env.tree_label()}")
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        terminalreporter.write_line("SparseFlow: no test was skipped.")
        return
    reasons: dict[str, int] = {}
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.write_sep("!", f"SparseFlow: {len(skipped)} tests SKIPPED")
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"  SKIPPED x{n}: {reason}")


@pytest.fixture
def seeded():
    import torch

    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)
