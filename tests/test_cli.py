"""The command line: demo (the main job, at a tiny size on the CPU) and inspect."""

import subprocess
import sys
from pathlib import Path

from comfyui_sparseflow.sparseflow.routing import routing_preset
from comfyui_sparseflow.sparseflow.routing_file import save_routing

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "sparseflow", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_demo_calibrates_structured_heads_and_writes_the_map(tmp_path):
    out = tmp_path / "demo.png"
    res = _run("demo", "--size", "tiny", "--layers", "1", "--heads", "3", "--block", "64", "--backend", "reference",
               "--device", "cpu", "--repeat", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "geometry 5x6x10" in text and "backend reference" in text
    for kind in ("local", "smooth", "global"):
        assert f"  {kind}" in text
    assert "density" in text and "time per call" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res2 = _run("inspect", str(out.with_suffix(".safetensors")))
    assert res2.returncode == 0, res2.stderr
    assert "calibration:demo" in res2.stdout


def test_inspect_rejects_a_pickle_without_loading_it(tmp_path):
    bad = tmp_path / "routing.pt"
    bad.write_bytes(b"\x80\x04\x95not really")
    res = _run("inspect", str(bad))
    assert res.returncode == 2
    assert "routing.pt" in res.stderr and "safetensors" in res.stderr


def test_inspect_summarises_a_valid_file(tmp_path):
    path = save_routing(routing_preset("alternating", 4, 6, family="wan2.1"), tmp_path / "alt.safetensors")
    res = _run("inspect", str(path))
    assert res.returncode == 0, res.stderr
    assert "wan2.1" in res.stdout and "4" in res.stdout
