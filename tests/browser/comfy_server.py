"""Start a real ComfyUI server on 127.0.0.1 with this pack installed, for browser and /object_info tests.

The server runs from the ComfyUI tree tests/comfy_env.py finds, with its own throw-away ``--base-directory``:
``custom_nodes/SparseFlow`` is a symlink to this repository, models/input/output/user are temp folders (input holds
the ``example.png`` the i2v workflow's LoadImage names) and the database is in memory, so nothing is written into
the ComfyUI tree. The frontend is one of tests/browser/frontends.py: ``pinned`` (the installed
``comfyui-frontend-package``, the version ComfyUI pins in its requirements.txt) or ``newest`` (served with
``--front-end-root`` from the cache tests/browser/setup.sh fills).

One server per frontend and pytest process: ``shared_server(frontend)`` starts it on first use and stops it at
exit, so tests/test_workflows.py and tests/test_browser.py share the pinned one. ``ComfyServer`` can also be used
directly as a context manager (``with ComfyServer() as s: s.url``). ``$SPARSEFLOW_PACK_DIR`` points the server at
another pack folder (used while developing the widget against a stub of the nodes).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from browser import frontends
from comfy_env import comfy_path, missing_reason

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "SparseFlow"
START_TIMEOUT_S = 90.0
EXAMPLE_IMAGE = "example.png"

log = logging.getLogger("sparseflow.tests.comfy_server")

# Frontend settings for a fresh test user: no first-run template dialog, and no missing-*model* dialog (the
# workflows name real model files that a test machine does not have); the missing-*node* dialog stays on.
TEST_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.ErrorSystem.ShowMissingModels": False,  # 1.55+: else it sends HEAD requests to the models' URLs
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Validation.Workflows": True,
    "Comfy.Notification.ShowVersionUpdates": False,
    # 1.27 sets the two below from NavigationMode's onChange before they are registered (a page error at
    # first start); giving all three their legacy values up front avoids that start-up noise
    "Comfy.Canvas.NavigationMode": "legacy",
    "Comfy.Canvas.LeftMouseClickBehavior": "panning",
    "Comfy.Canvas.MouseWheelScroll": "zoom",
    # keep node text readable in whole-workflow screenshots (the default switches to low detail sooner)
    "LiteGraph.Canvas.MinFontSizeForLOD": 4,
    "Comfy.Minimap.Visible": False,
}


def _example_png() -> bytes:
    """A 64 x 64 RGB gradient as PNG bytes, for LoadImage's ``example.png``."""
    import torch
    from comfyui_sparseflow.sparseflow.render import encode_png

    ramp = torch.linspace(0, 255, 64).to(torch.uint8)
    rgb = torch.stack([ramp.expand(64, 64), ramp.expand(64, 64).T, torch.full((64, 64), 128, dtype=torch.uint8)], -1)
    return encode_png(rgb)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return json.loads(r.read().decode("utf-8"))


class ComfyServer:
    """A ComfyUI subprocess with this pack in a temp base directory; ``url`` once started."""

    def __init__(self, pack_dir: str | os.PathLike | None = None, port: int | None = None, frontend: str = "pinned"):
        root = comfy_path()
        if root is None:
            raise RuntimeError(missing_reason())
        reason = frontends.missing(frontend)
        if reason is not None:
            raise RuntimeError(reason)
        self.comfy_root = root
        self.frontend = frontend
        self.front_end_root = frontends.front_end_root(frontend)
        self.pack_dir = Path(pack_dir or os.environ.get("SPARSEFLOW_PACK_DIR") or REPO).resolve()
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def _make_base(self) -> Path:
        base = Path(tempfile.mkdtemp(prefix="sparseflow_comfy_"))
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user/default/workflows",
                    "user/default/subgraphs"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "custom_nodes" / PACK_NAME).symlink_to(self.pack_dir, target_is_directory=True)
        for f in (self.comfy_root / "input").glob("*.png"):  # a git checkout of ComfyUI has input/example.png
            shutil.copy2(f, base / "input" / f.name)
        example = base / "input" / EXAMPLE_IMAGE
        if not example.is_file():  # a released tree has none; the i2v workflow's LoadImage names it
            example.write_bytes(_example_png())
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(TEST_SETTINGS, indent=1))
        (base / "user" / "default" / "comfy.templates.json").write_text("[]")  # else the frontend logs a 404
        return base

    def start(self) -> ComfyServer:
        self.base = self._make_base()
        self.log_path = self.base / "comfyui.log"
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch", "--disable-api-nodes"]
        if self.front_end_root is not None:
            cmd += ["--front-end-root", str(self.front_end_root)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # the repo's own nodes/ must not shadow ComfyUI's nodes.py
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.comfy_root, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                get_json(self.url + "/system_stats", timeout=2.0)
                log.info("ComfyUI up at %s (base %s)", self.url, self.base)
                return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def object_info(self) -> dict:
        return get_json(self.url + "/object_info", timeout=30.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_shared: dict[str, ComfyServer] = {}
_shared_error: dict[str, str] = {}


def shared_server(frontend: str = "pinned") -> ComfyServer:
    """The process-wide server for a frontend, started on first call and stopped at interpreter exit; raises on
    failure (and again on every later call, without retrying)."""
    if frontend in _shared_error:
        raise RuntimeError(_shared_error[frontend])
    if frontend not in _shared:
        try:
            server = ComfyServer(frontend=frontend).start()
        except RuntimeError as e:
            _shared_error[frontend] = str(e)
            raise
        atexit.register(server.stop)
        _shared[frontend] = server
    return _shared[frontend]
