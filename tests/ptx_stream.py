"""Write the PTX instruction stream of the fused kernel's fp16 launches for sm_90 and sm_89, without debug lines.

For checking that a change leaves the fp16/bf16 path's compiled code as it was: run at two commits, then diff.

    python3 tests/ptx_stream.py /tmp/ptx_before    # at the old commit
    python3 tests/ptx_stream.py /tmp/ptx_after     # at the new one
    diff -r /tmp/ptx_before /tmp/ptx_after && echo identical

Launches (tests/cross_compile.py): the hopper tier's 128/128/8/3 with tensor descriptors on sm_90 and the consumer
tier's 128/64/8/3 on sm_89, spec block 128, each with every path compiled in (top-k, compensation, linear) and with
none. Dropped: `.loc`/`.file` lines, the debug sections, comments and `$L__` debug labels (they name source lines).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, not interpret
sys.path.insert(0, str(Path(__file__).resolve().parent))
from pack_package import load_pack_package  # noqa: E402

load_pack_package()
from cross_compile import compile_for, fused_launch  # noqa: E402

CASES = (("sm90_128_128_8_3_tma", 90, (128, 128, 8, 3), True), ("sm89_128_64_8_3", 89, (128, 64, 8, 3), False))
DEBUG_LABELS = ("$L__func", "$L__tmp", "$L__debug")


def instructions(ptx: str) -> str:
    """The PTX without its debug information and comments, one stripped line each."""
    out, in_debug = [], False
    for line in ptx.splitlines():
        s = line.strip()
        if s.startswith(".section") and "debug" in s:
            in_debug = True
        if in_debug:
            in_debug = s != "}"
            continue
        if s and not s.startswith((".loc", ".file", "//", *DEBUG_LABELS)):
            out.append(s)
    return "\n".join(out) + "\n"


def main(outdir: str) -> None:
    Path(outdir).mkdir(parents=True, exist_ok=True)
    for name, cc, cfg, tma in CASES:
        for kind in ((True, True, True), (False, False, False)):
            compiled = compile_for(fused_launch(cfg, 128, tma, *kind), cc)
            text = instructions(compiled.asm["ptx"])
            tag = f"{name}_{''.join('1' if x else '0' for x in kind)}"
            (Path(outdir) / f"{tag}.ptx").write_text(text)
            print(f"{tag}: {len(text.splitlines())} lines, shared memory {compiled.metadata.shared} B")


if __name__ == "__main__":
    main(sys.argv[1])
