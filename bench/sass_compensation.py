"""Where the compensation loop's time goes, read from the compiled code (no GPU): SASS instructions per key tile.

Compiles the fused kernel for sm_90 (tests/cross_compile.py: the hopper tier's 128/128/8/3 with descriptors, fp16,
compensation on, no LUT, no linear heads), disassembles it with the nvdisasm Triton ships, and counts the
instructions each warp issues between a tile's Q·K wgmma wait (`WARPGROUP.DEPBAR`) and the next step: for the
structural loop's tiles, up to the P·V wgmma; for the compensation loop's, up to the softmax's first exp2
(`MUFU.EX2`). docs/performance.md ("What pooled compensation costs") quotes the result.

    python3 bench/sass_compensation.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, not interpret
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
__import__("pack_package").load_pack_package()

import triton  # noqa: E402
from cross_compile import compile_for, fused_launch  # noqa: E402

OP = re.compile(r"\s*/\*[0-9a-f]+\*/\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def sass() -> list[str]:
    compiled = compile_for(fused_launch((128, 128, 8, 3), 128, True, False, True, False), 90)
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def region(lines: list[str], start: int, stop_op: str) -> Counter:
    """Opcodes from line `start` up to (not including) the first `stop_op`."""
    ops = Counter()
    for line in lines[start + 1:]:
        m = OP.match(line)
        if not m:
            continue
        if m.group(1) == stop_op:
            break
        ops[m.group(1)] += 1
    return ops


def main() -> None:
    lines = sass()
    waits = [i for i, line in enumerate(lines) if "WARPGROUP.DEPBAR" in line]
    hgmma = [i for i, line in enumerate(lines) if "HGMMA" in line and "tnspB" not in line and "RZ, !UPT" in line]
    # the Q·K wgmma of each loop starts from zero (RZ): structural loop first, compensation loop last
    first_wait = lambda start: next(i for i in waits if i > start)  # noqa: E731
    main_ops = region(lines, first_wait(hgmma[0]), "HGMMA")
    comp_ops = region(lines, first_wait(hgmma[-1]), "MUFU")
    for name, ops in (("structural tile: Q·K wait -> P·V wgmma", main_ops),
                      ("compensation tile: Q·K wait -> first exp2", comp_ops)):
        print(f"{name}: {sum(ops.values())} instructions; {', '.join(f'{k} {v}' for k, v in ops.most_common(8))}")


if __name__ == "__main__":
    main()
