"""Evaluation metrics against the official BiRefNet evaluator, its pieces, the CLI and the node.

Fixtures in tests/fixtures/eval (made with the official ``evaluation/metrics.py``, scikit-image
0.26 and opencv 5.0; none of them is needed here):
- metrics_pairs.npz / metrics_expected.json: six pairs and the official data-set numbers;
- metrics_random.npz: 33 more pairs (the last five: empty ground truth, all-foreground ground
  truth, constant prediction, one-pixel ground truth, perfect prediction) with the official
  per-image scalars ``scalars{i}`` (S, MAE, wF, adaptive F, adaptive E, HCE, BA) and curves
  ``curves{i}`` (F, E, BIoU; float32), and 160 random shapes with skimage's skeletons.
"""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from birefnet_core import evaluate as cli
from birefnet_core.errors import InputError
from birefnet_core.metrics.contours import polyline_vertex_counts, trace_borders
from birefnet_core.metrics.counts import PairCounts
from birefnet_core.metrics.distance_transform import nearest_feature
from birefnet_core.metrics.morphology import erode_square_packed, min_filter_square, pack_rows, unpack_rows
from birefnet_core.metrics.skeleton import skeletonize
from birefnet_core.metrics.suite import (
    TABLE_COLUMNS,
    MetricSuite,
    as_uint8,
    evaluate_pairs,
    format_table,
    score_image,
)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
RTOL = 1e-6
SCALAR_FIELDS = ("s_measure", "mae", "weighted_f", "adaptive_f", "adaptive_e", "hce",
                 "boundary_accuracy")
OFFICIAL_NAMES = {"Sm": "Smeasure", "wFm": "wFmeasure"}


@pytest.fixture(scope="module")
def fixture_pairs():
    data = np.load(FIXTURES / "metrics_pairs.npz")
    return [(data[f"pred{i}"], data[f"gt{i}"]) for i in range(6)]


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURES / "metrics_expected.json").read_text())


@pytest.fixture(scope="module")
def random_data():
    return np.load(FIXTURES / "metrics_random.npz")


def _assert_matches(results: dict, expected: dict) -> None:
    for key, value in expected.items():
        ours = results[OFFICIAL_NAMES.get(key, key)]
        if key == "HCE":
            assert ours == value
        else:
            np.testing.assert_allclose(ours, value, rtol=RTOL, atol=0, err_msg=key)


# ------------------------------------------------------------------------------ official numbers

def test_fixture_data_set_matches_the_official_evaluator(fixture_pairs, expected):
    results = evaluate_pairs([p for p, _ in fixture_pairs], [g for _, g in fixture_pairs])
    _assert_matches(results, expected)
    assert len(results["BIoU_curve"]) == 256


def test_thread_pool_gives_the_same_numbers(fixture_pairs):
    preds, gts = [p for p, _ in fixture_pairs] * 2, [g for _, g in fixture_pairs] * 2
    alone = evaluate_pairs(preds, gts, workers=1)
    assert evaluate_pairs(preds, gts, workers=3) == alone
    with pytest.raises(InputError, match="pair 12"):
        evaluate_pairs(preds + [np.zeros((4, 4))], gts + [np.zeros((5, 4))], workers=2)


def test_random_pairs_and_edge_cases_match_per_image(random_data):
    for index in range(int(random_data["count"])):
        scores = score_image(random_data[f"pred{index}"], random_data[f"gt{index}"])
        official = random_data[f"scalars{index}"]
        for field, value in zip(SCALAR_FIELDS, official):
            ours = getattr(scores, field)
            if math.isnan(value):
                assert math.isnan(ours), (index, field)
            elif field == "hce":
                assert ours == value, index
            else:
                np.testing.assert_allclose(ours, value, rtol=RTOL, atol=1e-12,
                                           err_msg=f"pair {index} {field}")
        curves = np.stack([scores.f_curve, scores.e_curve, scores.biou_curve])
        np.testing.assert_allclose(curves, random_data[f"curves{index}"], rtol=2e-7, atol=1e-9,
                                   err_msg=f"pair {index} curves")


def test_edge_cases_behave_as_the_official_code():
    gt = np.zeros((30, 40), np.uint8)
    gt[8:20, 10:25] = 255
    flat = score_image(np.full_like(gt, 77), gt)             # constant: no normalisation
    np.testing.assert_allclose(flat.mae, np.mean(np.abs(77 / 255 - (gt > 128))))
    empty = score_image(gt, np.zeros_like(gt))
    assert empty.weighted_f == 0 and empty.adaptive_f == 0 and math.isnan(empty.boundary_accuracy)
    full = score_image(gt, np.full_like(gt, 255))
    assert full.s_measure == pytest.approx(np.mean(gt / 255)) and full.hce >= 0
    perfect = score_image(gt, gt)
    assert perfect.hce == 0 and perfect.mae == 0 and perfect.boundary_accuracy == 1


def test_pool_reports_each_pair_and_stops_on_an_error(fixture_pairs):
    preds, gts = [p for p, _ in fixture_pairs] * 2, [g for _, g in fixture_pairs] * 2
    done = []
    suite = MetricSuite()
    suite.add_pairs(preds, gts, workers=2, on_pair=lambda: done.append(1))
    assert len(done) == len(suite) == 12
    assert suite.results() == evaluate_pairs(preds, gts, workers=1)

    def cancel() -> None:
        done.append(1)
        if len(done) >= 2:
            raise KeyboardInterrupt("cancelled")
    done.clear()
    with pytest.raises(KeyboardInterrupt, match="cancelled"):
        MetricSuite().add_pairs(preds, gts, workers=2, on_pair=cancel)
    assert len(done) <= 4                      # the pairs in flight finish, no new ones start


def test_adaptive_threshold_on_a_level_takes_the_exact_mean(monkeypatch):
    """Half the pixels at 255: the threshold min(2 * mean, 1) is a level of the prediction, so
    the pixel mean (not the histogram's) decides, as in the official code."""
    rng = np.random.default_rng(3)
    pred = np.zeros((36, 40), np.uint8)
    pred.flat[rng.permutation(pred.size)[: pred.size // 2]] = 255
    truth = rng.random(pred.shape) < 0.4
    calls = []
    original = PairCounts.soft_image
    monkeypatch.setattr(PairCounts, "soft_image",
                        lambda self: calls.append(1) or original(self))
    f_score, e_score = PairCounts(pred, truth).adaptive_scores()
    soft = pred / 255
    binary = soft >= min(2 * soft.mean(), 1)
    tp = np.count_nonzero(binary & truth)
    precision, recall = tp / np.count_nonzero(binary), tp / np.count_nonzero(truth)
    assert calls and f_score == pytest.approx(1.3 * precision * recall / (0.3 * precision + recall),
                                              rel=1e-12)


def test_square_erosion_matches_the_zero_padded_min_filter():
    rng = np.random.default_rng(5)
    sizes = [(1, 64), (3, 128), (70, 65)] + [tuple(rng.integers(1, 140, 2)) for _ in range(60)]
    for h, w in sizes:
        radius = int(rng.integers(0, 40))
        mask = rng.random((h, w)) > rng.random() * 0.3
        eroded = unpack_rows(erode_square_packed(pack_rows(mask), radius), w)
        np.testing.assert_array_equal(eroded, min_filter_square(mask.view(np.uint8), radius) > 0)


# ------------------------------------------------------------------------------ pieces

def test_skeleton_equals_skimage(random_data):
    for index in range(int(random_data["shapes"])):
        shape = random_data[f"shape{index}"]
        np.testing.assert_array_equal(skeletonize(shape), random_data[f"skeleton{index}"],
                                      err_msg=f"shape {index} {shape.shape}")


def test_nearest_feature_breaks_ties_like_scipy():
    """Nearest feature by brute force: smallest distance, then column, then row."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = rng.integers(1, 24, 2)
        features = rng.random((h, w)) < rng.choice([0.02, 0.1, 0.5])
        features[rng.integers(h), rng.integers(w)] = True
        squared, rows, cols = nearest_feature(features)
        fy, fx = np.nonzero(features)
        for y in range(h):
            for x in range(w):
                d2 = (fy - y) ** 2 + (fx - x) ** 2
                best = np.lexsort((fy, fx, d2))[0]
                assert (squared[y, x], rows[y, x], cols[y, x]) == (d2[best], fy[best], fx[best])


def test_borders_follow_opencv():
    mask = np.zeros((5, 6), bool)
    mask[1:4, 1:5] = True
    mask[2, 2:4] = False
    mask[0, 5] = True                                        # touches the ring diagonally
    borders = trace_borders(mask)
    points = list(zip(borders.ys.tolist(), borders.xs.tolist()))
    outer = [(0, 5), (1, 4), (1, 3), (1, 2), (1, 1), (2, 1), (3, 1), (3, 2), (3, 3), (3, 4),
             (2, 4), (1, 4)]
    hole = [(2, 1), (1, 2), (1, 3), (2, 4), (3, 3), (3, 2)]
    assert borders.lengths.tolist() == [12, 6] and points == outer + hole
    assert borders.components == 1 and borders.component.tolist() == [0, 0]


@pytest.mark.parametrize("points, count", [
    ([(0, 0), (5, 0)], 2), ([(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)], 2),
    ([(0, 0), (0, 5), (5, 5)], 3), ([(3, 3)], 1),
    ([(0, 0), (1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3), (7, 4)], 2),
    ([(0, 0), (4, 1), (8, 0), (12, 4), (16, 0)], 4)])
def test_polyline_vertices_as_approx_poly_dp(points, count):
    xs, ys = np.array(points).T
    assert polyline_vertex_counts(xs, ys, np.array([0, len(points)]), 2.0).tolist() == [count]
    # the same polylines batched with another one give the same counts
    both = polyline_vertex_counts(np.r_[xs, xs], np.r_[ys, ys],
                                  np.array([0, len(points), 2 * len(points)]), 2.0)
    assert both.tolist() == [count, count]


# ------------------------------------------------------------------------------ inputs

def test_input_conversion_and_errors():
    ramp = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    assert as_uint8(ramp).tolist() == (ramp * 255).astype(np.uint8).tolist()   # floor(255 x)
    assert as_uint8(np.eye(3, dtype=bool)).max() == 255
    assert as_uint8(np.ones((2, 2, 1), np.int32) * 9).shape == (2, 2)
    for bad, message in [(np.full((2, 2), np.nan), "NaN"), (np.full((2, 2), 1.5), r"\[0, 1\]"),
                         (np.full((2, 2), 300), "0-255"), (np.zeros((2, 2, 3)), "H x W"),
                         (np.zeros((0, 3)), "H x W")]:
        with pytest.raises(InputError, match=message):
            as_uint8(bad)
    with pytest.raises(InputError, match="10x8 but the ground truth is 10x9"):
        score_image(np.zeros((8, 10), np.uint8), np.zeros((9, 10), np.uint8))
    with pytest.raises(InputError, match="pair 1: .*width x height"):
        evaluate_pairs([np.zeros((4, 4))] * 2, [np.zeros((4, 4)), np.zeros((5, 4))])
    with pytest.raises(InputError, match="2 predictions but 1 ground truths"):
        evaluate_pairs([np.zeros((4, 4))] * 2, [np.zeros((4, 4))])
    with pytest.raises(InputError, match="no image pairs"):
        MetricSuite().results()


def test_float_and_uint8_inputs_agree(fixture_pairs):
    pred, gt = fixture_pairs[1]
    as_float = score_image(pred.astype(np.float32) / 255, gt > 128)
    as_bytes = score_image(pred, gt)
    assert as_float.hce == as_bytes.hce and as_float.s_measure == as_bytes.s_measure


# ------------------------------------------------------------------------------ CLI

def _write(folder: Path, name: str, image: np.ndarray) -> None:
    folder.mkdir(exist_ok=True)
    Image.fromarray(image).save(folder / name)


def test_cli_scores_folders_and_writes_json(tmp_path, fixture_pairs, expected, capsys):
    for index, (pred, gt) in enumerate(fixture_pairs):
        _write(tmp_path / "pred", f"img{index}.png", pred)
        _write(tmp_path / "gt", f"img{index}.{'bmp' if index % 2 else 'png'}", gt)
    _write(tmp_path / "pred", "stray.png", fixture_pairs[0][0])
    out = tmp_path / "out" / "scores.json"
    code = cli.main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                     "--json", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert "6 pairs" in captured.out and all(c in captured.out for c in TABLE_COLUMNS)
    assert "stray.png" in captured.err
    results = json.loads(out.read_text())
    assert results["pairs"] == 6
    _assert_matches(results, expected)


def test_cli_reports_missing_files_sizes_and_empty_folders(tmp_path, capsys):
    image = np.zeros((8, 8), np.uint8)
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "gt", "a.png", image)
    _write(tmp_path / "gt", "b.png", image)
    _write(tmp_path / "pred", "a.png", np.zeros((8, 9), np.uint8))

    def run(pred: str, gt: str) -> str:
        assert cli.main(["--pred", str(tmp_path / pred), "--gt", str(tmp_path / gt)]) == 2
        return capsys.readouterr().err

    assert "holds no images" in run("empty", "gt")
    assert "does not exist" in run("nowhere", "gt")
    missing = run("pred", "gt")
    assert "1 of 2 ground truths have no prediction" in missing and "b.png" in missing
    _write(tmp_path / "pred", "b.png", image)
    assert "a.png is 9x8, a.png is 8x8" in run("pred", "gt")


# ------------------------------------------------------------------------------ node

@pytest.fixture(scope="module")
def evaluate_node():
    from tests.comfyui_inprocess import import_pack
    pack = import_pack()
    return importlib.import_module(f"{pack.__name__}.nodes.evaluate").BiRefNetEvaluate


def test_node_scores_a_batch_as_one_data_set(evaluate_node, fixture_pairs):
    pred, gt = fixture_pairs[1]
    preds = np.stack([pred, pred[::-1]]).astype(np.float32) / 255
    truths = np.stack([gt, gt[::-1]]).astype(np.float32) / 255
    table, text = evaluate_node().evaluate(torch.from_numpy(preds), torch.from_numpy(truths))
    results = json.loads(text)
    reference = evaluate_pairs([pred, pred[::-1]], [gt, gt[::-1]])
    assert results["masks"] == 2 and table.startswith("2 masks")
    assert table.endswith(format_table(reference))
    for column in TABLE_COLUMNS:
        assert results[column] == pytest.approx(reference[column], rel=1e-12)
    spec = evaluate_node.INPUT_TYPES()["required"]
    assert set(spec) == {"mask", "ground_truth"} and evaluate_node.CATEGORY == "BiRefNet"
    assert evaluate_node.RETURN_TYPES == ("STRING", "STRING")


def test_node_errors_name_the_node(evaluate_node):
    node = evaluate_node()
    with pytest.raises(ValueError, match="BiRefNetEvaluate: the masks are 8x6 but the ground"):
        node.evaluate(torch.zeros(1, 6, 8), torch.zeros(1, 6, 9))
    with pytest.raises(ValueError, match="BiRefNetEvaluate: batch sizes do not match"):
        node.evaluate(torch.zeros(3, 6, 8), torch.zeros(2, 6, 8))
    with pytest.raises(ValueError, match="BiRefNetEvaluate: .*NaN"):
        node.evaluate(torch.full((1, 6, 8), float("nan")), torch.zeros(1, 6, 8))
    one_truth = node.evaluate(torch.rand(2, 6, 8), torch.ones(1, 6, 8))
    assert json.loads(one_truth[1])["masks"] == 2
