"""bench/gpu_check.py judges what it measures: its --cpu-smoke run (the CPU standing in for the
GPU, one parity fixture) exits 0 when every mask is finite and within MASK_BOUNDS of float32,
and 1 when a float16 or bfloat16 model returns NaN or masks moved past the bound."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bench import gpu_check

FIXTURE = "pvt_v2_b0_192x320"


@pytest.fixture()
def one_fixture(monkeypatch):
    monkeypatch.setattr(gpu_check, "parity_fixture_names", lambda: [FIXTURE])


def _poison(monkeypatch, dtype: str, change) -> None:
    """Models of ``dtype`` built by the check return ``change(logits)``."""
    build = gpu_check.Check.model

    def model(self, backbone, dtype_name="fp32", order="current"):
        network = build(self, backbone, dtype_name, order)
        if dtype_name == dtype:
            forward = network.forward
            network.forward = lambda x: change(forward(x))
        return network
    monkeypatch.setattr(gpu_check.Check, "model", model)


def _run(tmp_path, *dtypes: str) -> tuple[int, dict]:
    """A smoke run of the precision step (float32 and ``dtypes``) on the one fixture."""
    out = tmp_path / "check.json"
    status = gpu_check.main(["--cpu-smoke", "--steps", "precision", "--dtypes", *dtypes,
                             "--out", str(out)])
    return status, json.loads(out.read_text())


def test_smoke_run_within_bounds_passes(tmp_path, one_fixture):
    status, result = _run(tmp_path, "fp16", "bf16")
    assert status == 0 and result["failures"] == []
    rows = result["steps"]["precision"]["result"]
    assert {row["dtype"] for row in rows} == {"fp16", "bf16"}
    for row in rows:                     # the bounds bind: real differences are below them
        assert 0 < row["max_abs_mask_diff"] <= gpu_check.MASK_BOUNDS[row["dtype"]]


def test_nan_in_a_float16_mask_fails(tmp_path, one_fixture, monkeypatch):
    def one_nan(logits):
        logits = logits.clone()
        logits[0, 0, 5, 7] = math.nan
        return logits
    _poison(monkeypatch, "fp16", one_nan)
    status, result = _run(tmp_path, "fp16")
    assert status == 1
    assert [f for f in result["failures"] if "not finite" in f]


def test_mask_past_its_bound_fails_and_names_the_fixture(tmp_path, one_fixture, monkeypatch):
    """bfloat16 logits shifted by 1: a mask anywhere in [0.05, 0.95] moves by at least 0.031,
    about twice the bfloat16 bound."""
    assert gpu_check.MASK_BOUNDS["bf16"] < 0.031
    _poison(monkeypatch, "bf16", lambda logits: logits + 1.0)
    status, result = _run(tmp_path, "bf16")
    assert status == 1
    assert [f for f in result["failures"] if FIXTURE in f and "bf16" in f and "> " in f]
    assert not [f for f in result["failures"] if "not finite" in f]


def test_judge_finds_non_finite_numbers_and_failed_steps():
    steps = {"speed": {"result": [{"variant": "swin_v1_t", "median_s": 0.1, "finite": False}]},
             "memory": {"result": [{"size": 2048, "peak_mib": float("inf"), "finite": True}]},
             "video": {"result": {"failed": "RuntimeError: boom"}},
             "precision": {"result": [{"fixture": "f", "dtype": "fp16", "finite": True,
                                       "max_abs_mask_diff": float("nan")}]}}
    failures = gpu_check.judge(steps)
    assert len(failures) == 4
    assert any(f.startswith("video: RuntimeError") for f in failures)
    assert any("speed" in f and "not finite" in f for f in failures)
    assert any("peak_mib" in f for f in failures)
    assert any("max_abs_mask_diff" in f for f in failures)
    clean = {"precision": {"result": [{"fixture": "f", "dtype": "fp16", "finite": True,
                                       "max_abs_mask_diff": gpu_check.MASK_BOUNDS["fp16"]}]}}
    assert gpu_check.judge(clean) == []
    assert torch.isfinite(torch.tensor(list(gpu_check.MASK_BOUNDS.values()))).all()
