"""SparseFlow core: the framework-free operator (geometry, masks, schedules, routing maps, reference, calibration).

Imports nothing from ComfyUI. docs/spec.md defines the operator; docs/design.md the data path.
"""

from .geometry import Geometry, geometry_from_latent, latent_shape_for_video
from .plan import DENSE, LINEAR, ROUTE_NAMES, SPARSE, AttentionPlan, uniform_plan
from .reference import dense_attention, reference_attention

__all__ = [
    "DENSE",
    "LINEAR",
    "ROUTE_NAMES",
    "SPARSE",
    "AttentionPlan",
    "Geometry",
    "dense_attention",
    "geometry_from_latent",
    "latent_shape_for_video",
    "reference_attention",
    "uniform_plan",
]
