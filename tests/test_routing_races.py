"""What an adversarial probe found in routing maps (issue 18): override keys the widget would reject, huge keys
echoed into errors, heads named twice; concurrent saves of one file name; the size of the largest map."""

import os
import re
import threading
import time

import pytest
import torch
from comfyui_sparseflow.sparseflow import routing_file
from comfyui_sparseflow.sparseflow.routing import MAX_DIM, parse_overrides, routing_preset, with_overrides
from comfyui_sparseflow.sparseflow.routing_file import load_routing, save_routing

SAVERS = 6


@pytest.mark.parametrize("key", ["\u0663.\u0667", "3.\uff17", "\U0001d7d1.1"])  # Arabic-Indic, full-width, math
def test_override_keys_take_ascii_digits_only_as_the_widget_does(key):
    assert re.match(r"^(\d{1,4})\.(\d{1,4})$", key)  # Python's \d takes these digits; the widget does not
    with pytest.raises(ValueError, match="is malformed; allowed: 'layer.head' in ASCII digits"):
        parse_overrides('{"%s": "dense"}' % key)


def test_a_huge_key_or_value_is_not_echoed_whole():
    for text in ('{"%s": "dense"}' % ("9" * 1_000_000), '{"1.1": "%s"}' % ("x" * 1_000_000)):
        with pytest.raises(ValueError) as err:
            parse_overrides(text)
        assert len(str(err.value)) < 300 and "1000002 characters" in str(err.value)


def test_a_head_named_twice_is_an_error_not_the_last_one_kept():
    with pytest.raises(ValueError, match="key '1.2' is given twice; allowed: each 'layer.head' once"):
        parse_overrides('{"1.2": "dense", "1.2": "linear"}')
    with pytest.raises(ValueError, match="'1.2' and '01.2' name the same head"):
        parse_overrides('{"1.2": "dense", "01.2": "linear"}')
    with pytest.raises(ValueError, match="'1.2' and '1.02' name the same head"):
        with_overrides(routing_preset("all_sparse", 4, 4), {"1.2": "dense", "1.02": "linear"})


def test_the_largest_map_is_the_largest_a_model_has_with_margin():
    assert MAX_DIM == 128  # Wan 2.1 / 2.2: at most 40 layers x 40 heads
    with pytest.raises(ValueError, match=r"layers must be an int in \[1, 128\]"):
        routing_preset("heuristic", 129, 40)
    start = time.perf_counter()
    big = with_overrides(routing_preset("heuristic", 128, 128), {"127.127": "dense"})
    assert time.perf_counter() - start < 5.0 and big.routes.shape == (128, 128)


def _save_all_at_once(path, overwrite: bool, monkeypatch) -> list[object]:
    """SAVERS threads save maps of different shapes under one name; each waits for the others after writing its
    bytes and before naming the file, which is where the old code let every thread through."""
    barrier = threading.Barrier(SAVERS, timeout=30)
    real_fsync = os.fsync

    def fsync_then_wait(fd):
        real_fsync(fd)
        barrier.wait()

    monkeypatch.setattr(routing_file.os, "fsync", fsync_then_wait)
    results: list[object] = [None] * SAVERS

    def save(i: int) -> None:
        try:
            results[i] = save_routing(routing_preset("all_sparse", 1, i + 1), path, overwrite=overwrite)
        except Exception as e:  # noqa: BLE001 - collected and checked below
            results[i] = e

    threads = [threading.Thread(target=save, args=(i,)) for i in range(SAVERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_saves_without_overwrite_save_exactly_one(tmp_path, monkeypatch):
    path = tmp_path / "shared.safetensors"
    results = _save_all_at_once(path, False, monkeypatch)
    saved = [i for i, r in enumerate(results) if r == path]
    refused = [r for r in results if isinstance(r, FileExistsError)]
    assert len(saved) == 1 and len(refused) == SAVERS - 1, results
    assert load_routing(path).heads == saved[0] + 1  # the file is the one save that said "saved"
    assert [p.name for p in tmp_path.iterdir()] == ["shared.safetensors"]  # no temp file left


def test_concurrent_saves_with_overwrite_each_write_a_whole_file(tmp_path, monkeypatch):
    path = tmp_path / "shared.safetensors"
    results = _save_all_at_once(path, True, monkeypatch)
    assert results == [path] * SAVERS
    m = load_routing(path)  # one of them, whole
    assert 1 <= m.heads <= SAVERS and torch.equal(m.routes, routing_preset("all_sparse", 1, m.heads).routes)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.safetensors"]
