"""Rebuild workflows/*.json from tests/browser/workflow_specs.mjs through a real ComfyUI + chromium, then run the
browser test and refresh the .jpg screenshots:  python tests/browser/rebuild_workflows.py
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "tests")]

__import__("pack_package").load_pack_package()  # comfy_server renders an example PNG with the pack's core
from comfy_server import ComfyServer  # noqa: E402

if __name__ == "__main__":
    with ComfyServer() as server:
        build = [str(HERE / "build_workflows.mjs"), "--url", server.url, "--out", str(REPO / "workflows")]
        subprocess.run(["node", *build], cwd=REPO, check=True)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_browser.py"], cwd=REPO, check=True)
    subprocess.run([sys.executable, str(HERE / "update_workflow_jpgs.py")], cwd=REPO, check=True)
