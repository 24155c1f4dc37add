"""A real ComfyUI server (CPU) with this pack in custom_nodes: /object_info, an API-format workflow that patches
and samples a tiny Wan, the `sparseflow.report` websocket event and success in /history.

Least invasive set-up: `main.py --base-directory <tmp>` (ComfyUI 0.3.64 `folder_paths`: models, custom_nodes,
input, output, temp and user all under it), so nothing is written into the ComfyUI checkout. The temp
custom_nodes folder holds a symlink to this repository and a test-only node that outputs a random Wan
CONDITIONING (no text encoder is shipped); the tiny checkpoint goes into <tmp>/models/diffusion_models.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import tiny_wan as tw
from comfy_env import comfy_path, requires_comfy

pytestmark = requires_comfy

REPO = Path(__file__).resolve().parent.parent
NODE_IDS = ["SparseFlowPatch", "SparseFlowSchedule", "SparseFlowRouting", "SparseFlowCalibrate",
            "SparseFlowCalibrateToTarget", "SparseFlowSaveRouting"]
START_TIMEOUT = 90
RUN_TIMEOUT = 120

TEST_NODE = '''
import torch


class SparseFlowTestConditioning:
    """Test only: a random stand-in for UMT5 output, (1, 512, 4096), as Wan's text encoder would give."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 512, 4096, generator=g), {}]],)


NODE_CLASS_MAPPINGS = {"SparseFlowTestConditioning": SparseFlowTestConditioning}
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _history(url: str, prompt_id: str, wait: float = 30.0) -> dict:
    """The prompt's history entry. ComfyUI sends the final "executing" message before it stores the history
    (prompt_queue.task_done runs after the executor returns), so poll briefly instead of reading once."""
    deadline = time.monotonic() + wait
    while True:
        entry = _get(f"{url}/history/{prompt_id}").get(prompt_id)
        if entry is not None or time.monotonic() > deadline:
            assert entry is not None, f"no history for prompt {prompt_id} after {wait} s"
            return entry
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = comfy_path()
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui_sparseflow").symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes" / "sparseflow_test_nodes.py").write_text(TEST_NODE)
    models = base / "models" / "diffusion_models"
    models.mkdir(parents=True)
    tw.save_checkpoint(tw.WAN21_T2V, models)
    port = _free_port()
    log_path = base / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
             str(base), "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:"],
            cwd=root, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                _get(f"{url}/system_stats", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer in {START_TIMEOUT}s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.5)
        yield {"url": url, "port": port, "base": base, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_object_info_lists_every_node_with_tooltips_and_descriptions(server):
    info = _get(f"{server['url']}/object_info")
    log = server["log"].read_text()
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info; server log:\n{log[-3000:]}"
        node = info[node_id]
        assert node["category"] == "model/patch/sparseflow" and node["experimental"] is True
        assert node["description"] and node["display_name"].startswith("SparseFlow ")
        for group in ("required", "optional"):
            for name, spec in node["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["SparseFlowSaveRouting"]["output_node"] is True
    assert info["SparseFlowPatch"]["input"]["required"]["routing_overrides"][1]["default"] == "{}"
    assert info["SparseFlowPatch"]["input"]["optional"]["schedule"][0] == "SPARSEFLOW_SCHEDULE"
    # optional, so API prompts written before it existed still validate (the prompt below leaves it out)
    assert info["SparseFlowPatch"]["input"]["optional"]["fuse_qk_norm_rope"][1]["default"] is True
    assert info["SparseFlowPatch"]["input"]["optional"]["fuse_block_norms"][1]["default"] is True
    assert info["SparseFlowRouting"]["output"] == ["SPARSEFLOW_ROUTING"]
    extensions = _get(f"{server['url']}/extensions")
    assert all(isinstance(e, str) for e in extensions)


def _workflow(ckpt: str) -> dict:
    patch_inputs = {"model": ["1", 0], "schedule": ["4", 0], "routing": ["5", 0], "sparsity": 0.5, "window": -1,
                    "anchor_frames": 1, "linear_kind": "pooled", "backend": "reference", "block_size": "64",
                    "routing_overrides": '{"1.1": "dense"}'}
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": ckpt, "weight_dtype": "default"}},
        "2": {"class_type": "SparseFlowTestConditioning", "inputs": {"seed": 0}},
        "3": {"class_type": "SparseFlowTestConditioning", "inputs": {"seed": 1}},
        "4": {"class_type": "SparseFlowSchedule", "inputs": {
            "preset": "fast", "progress_mode": "steps", "early_window": 0, "late_window": 2, "dense_from": 1.0,
            "topk": 0, "compensation": True, "keyframes": ""}},
        "5": {"class_type": "SparseFlowRouting", "inputs": {
            "preset": "alternating", "file": "none", "layers": 2, "heads": 2, "family": "wan2.1",
            "routing_overrides": '{"0.0": "dense"}'}},
        "6": {"class_type": "SparseFlowPatch", "inputs": patch_inputs},
        "7": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 128, "height": 128, "length": 13,
                                                                  "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "seed": 0, "steps": 2, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["7", 0], "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "sparseflow_test"}},
        "10": {"class_type": "SparseFlowCalibrate", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["7", 0], "steps": 1,
            "measure_steps": 1, "cfg": 3.0, "seed": 0, "sampler_name": "euler", "scheduler": "simple",
            "error_budget": 0.1, "block_size": "64"}},
        "11": {"class_type": "SparseFlowSaveRouting", "inputs": {"routing": ["10", 0], "filename": "server_test",
                                                                 "overwrite": False}},
    }


async def _drain(ws) -> list[dict]:
    """The JSON messages a websocket has received so far."""
    import aiohttp

    out = []
    while True:
        try:
            msg = await ws.receive(timeout=0.5)
        except asyncio.TimeoutError:
            return out
        if msg.type != aiohttp.WSMsgType.TEXT:
            return out
        out.append(json.loads(msg.data))


async def _run_prompt(url: str, prompt: dict) -> tuple[str, list[dict], list[dict]]:
    """POST the prompt with a websocket open; return (prompt_id, every JSON message until it finished, the messages
    another open browser tab got meanwhile)."""
    import aiohttp

    client_id = uuid.uuid4().hex
    messages: list[dict] = []
    async with aiohttp.ClientSession() as session:
        other = await session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={uuid.uuid4().hex}")
        async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                body = await r.json()
                assert r.status == 200, body
            prompt_id = body["prompt_id"]
            deadline = time.monotonic() + RUN_TIMEOUT
            while time.monotonic() < deadline:
                msg = await ws.receive(timeout=RUN_TIMEOUT)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                messages.append(data)
                d = data.get("data", {})
                if data["type"] == "execution_error":
                    break
                if data["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
                    break
                if data["type"] == "execution_success" and d.get("prompt_id") == prompt_id:
                    break
        others = await _drain(other)
        await other.close()
    return prompt_id, messages, others


def test_api_workflow_patches_samples_calibrates_and_reports(server):
    prompt_id, messages, others = asyncio.run(_run_prompt(server["url"], _workflow("tiny_wan21_t2v.safetensors")))
    errors = [m for m in messages if m["type"] == "execution_error"]
    assert not errors, f"{errors}\n{server['log'].read_text()[-4000:]}"
    history = _history(server["url"], prompt_id)
    assert history["status"]["status_str"] == "success" and history["status"]["completed"]

    outputs = history["outputs"]
    patch_ui = outputs["6"]
    assert patch_ui["sparseflow_routing"][0]["routes"] == [[0, 2], [1, 0]]  # alternating + both overrides
    assert "backend reference" in patch_ui["text"][0]
    assert outputs["5"]["sparseflow_routing"][0]["layers"] == 2
    assert outputs["10"]["sparseflow_routing"][0]["heads"] == 2
    assert "saved server_test.safetensors" in outputs["11"]["text"][0]
    assert (server["base"] / "models" / "sparseflow" / "server_test.safetensors").is_file()
    assert list((server["base"] / "output").glob("sparseflow_test*.latent"))

    reports = [m["data"] for m in messages if m["type"] == "sparseflow.report"]
    assert len(reports) == 1, [m["type"] for m in messages]
    report = reports[0]
    assert report["node"] == "6" and report["prompt_id"] == prompt_id and report["backend"] == "reference"
    assert others and not [m for m in others if m["type"] == "sparseflow.report"]  # only the prompt's own tab
    assert len(report["density_per_step"]) == 2 and report["density_per_step"][0] < 1.0
    assert report["route_counts"] == {"dense": 2, "sparse": 1, "linear": 1}
    assert report["text"].startswith("SparseFlow: 2 steps")
    assert report["text"] in server["log"].read_text()
