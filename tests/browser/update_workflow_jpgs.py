"""Turn the browser test's workflow screenshots (tests/artifacts/browser/<frontend>/<name>.png, the frontend ComfyUI
pins by default) into workflows/<name>.jpg.

Run after `python -m pytest tests/test_browser.py` when a workflow or the widget's look changed:
    python tests/browser/update_workflow_jpgs.py [pinned|newest]
"""

import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FRONTEND = sys.argv[1] if len(sys.argv) > 1 else "pinned"  # tests/browser/frontends.py FRONTENDS
SHOTS = REPO / "tests" / "artifacts" / "browser" / FRONTEND

if __name__ == "__main__":
    for wf in sorted((REPO / "workflows").glob("*.json")):
        png = SHOTS / f"{wf.stem}.png"
        if not png.is_file():
            raise SystemExit(f"{png} is missing: run tests/test_browser.py first")
        with Image.open(png) as im:
            im.convert("RGB").save(wf.with_suffix(".jpg"), "JPEG", quality=85, optimize=True)
        print(f"wrote {wf.with_suffix('.jpg').relative_to(REPO)}")
