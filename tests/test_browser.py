"""Browser tests of the routing grid and the shareable workflows, in Debian's chromium against a real ComfyUI, once
per frontend: the one ComfyUI pins (1.27.10 for 0.3.64) and the newest (tests/browser/frontends.py, 1.58.1).

tests/browser/run_workflows.mjs drives the page (playwright-core); this wrapper starts one server per frontend
(tests/browser/comfy_server.py: this pack; the newest frontend through --front-end-root), runs the driver once per
frontend, and turns its checks into one test each: every workflow, the run report, a real run, and SparseFlow
nodes inside subgraphs (tests/browser/subgraph_checks.mjs). Screenshots land in tests/artifacts/browser/<frontend>/.
Skipped loudly when ComfyUI, chromium, node, playwright-core or the newest frontend is missing
(`bash tests/browser/setup.sh` installs the last four); SPARSEFLOW_REQUIRE_COMFYUI=1 turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from browser import frontends
from browser.comfy_server import shared_server
from comfy_env import REQUIRE_ENV, comfy_path, missing_reason, requires_comfy

pytestmark = requires_comfy  # run once per ComfyUI tree (dev.sh: pytest -m comfyui)

REPO = Path(__file__).resolve().parents[1]
BROWSER = REPO / "tests" / "browser"
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
DRIVER_TIMEOUT_S = 240


def _missing(frontend: str) -> str | None:
    if comfy_path() is None:
        return missing_reason()
    reason = frontends.missing(frontend)
    if reason:
        return reason
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).is_file():
        return f"chromium not found at {chromium}: run `bash tests/browser/setup.sh` (apt-get install chromium)"
    if shutil.which("node") is None:
        return "node (Node.js >= 20) not found: the browser driver is a Node script"
    if not (BROWSER / "node_modules" / "playwright-core" / "package.json").is_file():
        return "playwright-core not installed in tests/browser/node_modules: run `bash tests/browser/setup.sh`"
    return None


@pytest.fixture(scope="module", params=frontends.FRONTENDS, ids=frontends.label)
def frontend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def browser_results(frontend: str) -> dict:
    reason = _missing(frontend)
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    server = shared_server(frontend)
    out = ARTIFACTS / frontend
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    proc = subprocess.run(
        ["node", str(BROWSER / "run_workflows.mjs"), "--url", server.url, "--workflows", str(REPO / "workflows"),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S,
    )
    print(proc.stdout[-4000:])
    results_path = out / "results.json"
    assert proc.returncode == 0 and results_path.is_file(), \
        f"browser driver failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(results_path.read_text())


def _assert_checks(result: dict, what: str) -> None:
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["ok"]]
    assert not failed, f"{what}: {len(failed)} of {len(result['checks'])} checks failed:\n" + "\n".join(failed)


@pytest.mark.parametrize("name", [p.stem for p in WORKFLOWS])
def test_workflow_loads_renders_grid_and_round_trips_a_click(browser_results: dict, name: str):
    result = browser_results["workflows"].get(name)
    assert result is not None, f"the driver did not test {name}"
    _assert_checks(result, name)
    assert Path(result["screenshot"]).is_file()


def test_run_report_event_shows_text_escaped_and_density_strip(browser_results: dict):
    _assert_checks(browser_results["extra"]["report"], "sparseflow.report")


def test_real_routing_run_reaches_the_grid_through_onexecuted(browser_results: dict):
    _assert_checks(browser_results["extra"]["real_run"], "Routing -> Save Routing prompt")


def test_compare_plot_draws_psnr_per_frame_and_marks_nan_frames(browser_results: dict):
    _assert_checks(browser_results["extra"]["compare_plot"], "SparseFlow Compare plot")


def test_expert_pair_in_a_subgraph_loads_validates_and_routes_events_by_inner_id(browser_results: dict):
    _assert_checks(browser_results["extra"]["subgraph_expert_pair"], "Wan 2.2 14B experts in a subgraph")


def test_real_run_inside_a_subgraph_reaches_the_inner_grid(browser_results: dict):
    _assert_checks(browser_results["extra"]["subgraph_real_run"], "Routing -> Save Routing inside a subgraph")


def test_page_start_has_no_sparseflow_error_and_no_outside_request(browser_results: dict):
    ours = [e for e in browser_results["startup_errors"]
            if "sparseflow" in (e["text"] + e["url"] + e.get("stack", "")).lower()]
    assert not ours, f"errors from the SparseFlow extension at page start: {ours}"
    assert browser_results["external_requests"] == [], browser_results["external_requests"]
    # the newest frontend checks the download URLs of missing model files (HEAD, aborted): only URLs that our
    # workflows or the frontend's own start-up graph carry
    known = {m["url"] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]
             for m in n.get("properties", {}).get("models", [])} | set(browser_results["default_graph_models"])
    probed = {p["url"] for p in browser_results["model_probes"]}
    assert probed <= known, probed - known
    assert browser_results["seconds"] < 180, f"browser run took {browser_results['seconds']:.0f} s"


def test_the_extension_is_served_and_listed(browser_results: dict, frontend: str):
    import urllib.request

    server = shared_server(frontend)
    with urllib.request.urlopen(server.url + "/extensions", timeout=10) as r:  # noqa: S310 - loopback
        listed = set(json.loads(r.read()))
    ours = {f"/extensions/SparseFlow/js/{p.name}" for p in (REPO / "web" / "js").glob("*.js")}
    assert "/extensions/SparseFlow/js/routing_grid.js" in ours and ours <= listed, ours - listed


def test_grid_math_graph_and_compare_plot_unit_tests_pass_under_node():
    if shutil.which("node") is None:
        pytest.skip("node (Node.js >= 20) not found: cannot run tests/browser/*.test.mjs")
    files = [str(BROWSER / "routing_math.test.mjs"), str(BROWSER / "grid_graph.test.mjs"),
             str(BROWSER / "compare_plot.test.mjs")]
    proc = subprocess.run(["node", "--test", *files], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 11" in proc.stdout, proc.stdout[-1000:]
