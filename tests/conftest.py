"""Session-wide test set-up: the pack imported as one package, and a loud summary of skipped tests."""

import os

import pytest
import torch
from pack_package import load_pack_package

os.environ.setdefault("SPARSEFLOW_TESTING", "1")
if not torch.cuda.is_available():
    # kernels run under Triton's CPU interpreter here; set before any test module imports them (the flag is read
    # when a kernel is decorated and when kernels/configs.py is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")
load_pack_package()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
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
