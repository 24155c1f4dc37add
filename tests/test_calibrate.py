"""Calibration math: per-head errors, the cheapest-within-budget choice, and the structured-head picks."""

import pytest
import torch
from comfyui_sparseflow.sparseflow.calibrate import (
    DEFAULT_CANDIDATES,
    Candidate,
    ErrorTable,
    choose_routes,
    head_errors,
)
from comfyui_sparseflow.sparseflow.geometry import Geometry
from comfyui_sparseflow.sparseflow.plan import DENSE, LINEAR, SPARSE
from comfyui_sparseflow.sparseflow.synthetic import structured_qkv

G = Geometry(9, 8, 16)  # 9 frames of 128 tokens, L = 1152, 18 blocks of 64


@pytest.fixture(scope="module")
def structured_errors():
    q, k, v = structured_qkv(G, ("local", "smooth", "global"), dim=64, seed=0)
    return head_errors(q, k, v, G, DEFAULT_CANDIDATES, block=64, compensation=True)


def test_calibration_picks_sparse_for_local_linear_for_smooth_dense_for_global(structured_errors):
    errors, costs = structured_errors
    result = choose_routes(errors[None], costs, DEFAULT_CANDIDATES, budget=0.1)
    routes = result.routes()[0].tolist()
    assert routes == [SPARSE, LINEAR, DENSE], result.report()
    assert (result.error <= 0.1).all()


def test_dense_candidate_has_zero_error_and_unit_cost(structured_errors):
    errors, costs = structured_errors
    dense = [i for i, c in enumerate(DEFAULT_CANDIDATES) if c.route == DENSE][0]
    assert errors[:, dense].abs().max() == 0
    assert costs[dense] == 1.0
    assert (costs[:dense] < 1.0).all()


def test_wider_windows_never_increase_error_on_local_heads(structured_errors):
    errors, _ = structured_errors
    w = [i for i, c in enumerate(DEFAULT_CANDIDATES) if c.route == SPARSE]
    assert all(errors[0, a] >= errors[0, b] - 1e-9 for a, b in zip(w, w[1:]))


def test_choice_is_cheapest_within_budget_and_dense_when_nothing_fits():
    cands = (Candidate(LINEAR), Candidate(SPARSE, 1), Candidate(DENSE))
    costs = torch.tensor([0.1, 0.3, 1.0], dtype=torch.float64)
    errors = torch.tensor([[[0.05, 0.01, 0.0], [0.5, 0.02, 0.0], [0.9, 0.8, 0.0]]], dtype=torch.float64)
    res = choose_routes(errors, costs, cands, budget=0.1)
    assert res.choice.tolist() == [[0, 1, 2]]
    assert res.windows().tolist() == [[-1, 1, -1]]
    assert "estimated attention cost" in res.report()


def test_budget_and_candidates_are_validated():
    with pytest.raises(ValueError, match="budget"):
        choose_routes(torch.zeros(1, 1, 1), torch.zeros(1), (Candidate(DENSE),), budget=-1)
    with pytest.raises(ValueError, match="dense candidate"):
        choose_routes(torch.zeros(1, 1, 1), torch.zeros(1), (Candidate(LINEAR),), budget=0.1)


def test_error_table_accumulates_rms_and_worst():
    table = ErrorTable(DEFAULT_CANDIDATES)
    table.add(3, torch.full((2, 5), 0.3, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    table.add(3, torch.full((2, 5), 0.4, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(table.rms(3), torch.full((2, 5), (0.125) ** 0.5, dtype=torch.float64))
    assert torch.allclose(table.worst[3], torch.full((2, 5), 0.4, dtype=torch.float64))
