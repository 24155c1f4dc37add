"""What SparseFlow tells the user: one-time log lines and the run report sent to the prompt's browser tab.

`log_once` follows core BSA's `log_once` (a reason is said once per process, not per call). `send_report` sends the
`sparseflow.report` websocket event to the client that queued the running prompt, with its prompt id (ComfyUI's own
"executed" messages go the same way: `send_sync(event, data, server.client_id)`); a prompt queued without a
client id (API use) gets no event, since a broadcast would reach every open tab.
"""

from __future__ import annotations

import logging
import sys

from ..sparseflow.telemetry import RunTelemetry

__all__ = ["REPORT_EVENT", "log_once", "send_report"]

log = logging.getLogger("sparseflow.nodes")

REPORT_EVENT = "sparseflow.report"
_logged: set = set()


def log_once(key: object, msg: str, *args: object, level: int = logging.INFO) -> None:
    """Log `msg` the first time `key` is seen in this process (core BSA's log_once)."""
    if key in _logged:
        return
    _logged.add(key)
    log.log(level, msg, *args)


def _prompt_id() -> str | None:
    """The running prompt's id (ComfyUI sets the executing context around each node's execution)."""
    utils = sys.modules.get("comfy_execution.utils")
    context = utils.get_executing_context() if utils is not None else None
    return getattr(context, "prompt_id", None)


def send_report(node_id: str | None, text: str, tel: RunTelemetry) -> bool:
    """One `sparseflow.report` event to the running prompt's client, when a ComfyUI server runs in this process
    and the prompt came with a client id. Returns whether it was sent."""
    srv = sys.modules.get("server")
    instance = getattr(getattr(srv, "PromptServer", None), "instance", None) if srv is not None else None
    client_id = getattr(instance, "client_id", None)
    if instance is None or client_id is None:
        return False
    payload = {"node": node_id, "prompt_id": _prompt_id(), "text": text,
               "density_per_step": list(tel.density_per_step().values()), "route_counts": tel.route_counts(),
               "backend": "+".join(tel.backends())}
    try:
        instance.send_sync(REPORT_EVENT, payload, client_id)
    except Exception as e:  # noqa: BLE001 - a UI message must never break sampling
        log_once(("send_sync", type(e).__name__), "SparseFlow: could not send the run report: %s", e,
                 level=logging.WARNING)
        return False
    return True
