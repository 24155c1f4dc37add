"""The ComfyUI extension object of SparseFlow: the node list, plus the `models/sparseflow` folder registration.

Registering the folder with folder_paths is the one side effect at load time (STYLE §10, GGUF
`update_folder_names_and_paths`); it happens when ComfyUI calls `comfy_entrypoint()`.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .calibrate import SparseFlowCalibrate
from .calibrate_target import SparseFlowCalibrateToTarget
from .compare import SparseFlowCompare, SparseFlowCompareResults
from .patch import SparseFlowPatch
from .routing import SparseFlowRouting, SparseFlowSaveRouting, register_folder
from .schedule import SparseFlowSchedule

__all__ = ["NODES", "SparseFlowExtension"]

NODES: list[type[io.ComfyNode]] = [SparseFlowPatch, SparseFlowSchedule, SparseFlowRouting, SparseFlowCalibrate,
                                   SparseFlowCalibrateToTarget, SparseFlowSaveRouting, SparseFlowCompare,
                                   SparseFlowCompareResults]

register_folder()


class SparseFlowExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
