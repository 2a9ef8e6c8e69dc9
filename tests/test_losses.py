"""Training objective (losses.py), training forward (training.py) and the fine-tuning CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import birefnet_core
from birefnet_core import InputError
from birefnet_core.training import losses
from birefnet_core.finetune import main
from birefnet_core.training.finetune import FinetuneOptions, find_pairs, finetune
from birefnet_core.training.forward import image_laplacian, training_forward, training_loss
from tests.synthetic import manifest, synthetic_float_weights

EVAL = Path(__file__).resolve().parent / "fixtures" / "eval"
BACKBONE = "pvt_v2_b0"


@pytest.fixture(scope="module")
def loss_fixture():
    with np.load(EVAL / "loss_inputs.npz") as data:
        gt = torch.from_numpy(data["gt"])
        logits = [torch.from_numpy(data[f"logits{i}"]) for i in range(4)]
    return gt, logits, json.loads((EVAL / "loss_expected.json").read_text())


def _relative(value: float, expected: float) -> float:
    return abs(value - expected) / abs(expected)


# ----------------------------------------------------------------------------- the losses

@pytest.mark.parametrize("task", ["DIS5K", "General", "Matting"])
def test_pixel_loss_matches_the_official_numbers(loss_fixture, task):
    gt, logits, expected = loss_fixture
    official = expected["pixloss"][task]
    assert losses.task_lambdas(task) == official["lambdas"]
    total, parts = losses.pixel_loss(logits, gt, losses.task_lambdas(task))
    assert _relative(total.item(), official["total"]) < 1e-5
    assert parts.keys() == official["parts"].keys()
    for name, value in official["parts"].items():
        assert _relative(parts[name], value) < 1e-5, name


def test_single_losses_match_the_official_numbers(loss_fixture):
    gt, logits, expected = loss_fixture
    probs = torch.sigmoid(logits[-1])
    values = {"bce": losses.bce_loss(probs, gt), "iou": losses.iou_loss(probs, gt),
              "ssim": losses.ssim_loss(probs, gt), "structure": losses.structure_loss(logits[-1], gt)}
    for name, value in values.items():
        assert _relative(value.item(), expected["single_last_level"][name]) < 1e-5, name


def test_losses_are_zero_or_minimal_for_a_perfect_prediction():
    gt = torch.zeros(2, 1, 32, 32)
    gt[:, :, 8:24, 8:24] = 1
    assert losses.iou_loss(gt, gt).item() == 0
    assert abs(losses.ssim_loss(gt, gt).item()) < 1e-6
    assert losses.mae_loss(gt, gt).item() == 0


def test_pixel_and_gradient_losses_give_gradients_to_every_level(loss_fixture):
    gt, logits, _ = loss_fixture
    logits = [t.clone().requires_grad_(True) for t in logits]
    total, _ = losses.pixel_loss(logits, gt, losses.task_lambdas("General"))
    labels = [torch.randn(2, 1, 64, 64) * gt for _ in range(3)]
    (total + losses.gradient_loss(logits[:3], labels)).backward()
    for level in logits:
        assert torch.isfinite(level.grad).all() and level.grad.abs().sum() > 0


def test_region_only_weights_follow_the_official_schedule():
    general = losses.region_only_lambdas(losses.task_lambdas("General"), "General", 2)
    assert general == {"bce": 0.0, "iou": 0.5 * 0.25, "mae": 100 * 0.81, "ssim": 10.0}
    matting = losses.region_only_lambdas(losses.task_lambdas("Matting"), "Matting", 1)
    assert matting == {"bce": 30.0, "mae": 100.0, "ssim": 9.0}
    with pytest.raises(ValueError):
        losses.task_lambdas("Nope")


def test_classification_loss_is_weighted_cross_entropy():
    logits, labels = torch.randn(4, 7), torch.tensor([0, 3, 6, 2])
    expected = torch.nn.functional.cross_entropy(logits, labels) * 5.0
    value = losses.classification_loss([logits, None], labels)
    assert torch.allclose(value, expected)


# ------------------------------------------------------------------- the training forward

@pytest.fixture(scope="module")
def weights():
    return synthetic_float_weights(BACKBONE)


def _model(weights):
    return birefnet_core.load_model(weights, fuse=False)


def test_laplacian_matches_kornia():
    kornia = pytest.importorskip("kornia")
    x = torch.randn(2, 3, 40, 56)
    expected = kornia.filters.laplacian(x.mean(dim=1, keepdim=True), kernel_size=5)
    assert torch.allclose(image_laplacian(x), expected, atol=1e-6)


def test_training_forward_in_eval_mode_equals_the_inference_forward(weights):
    model = _model(weights)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = training_forward(model, x)
        # unfused training path vs fused inference path: the parity bound (tests/test_parity.py)
        assert (outputs.stage_logits[-1] - model(x)).abs().max() < 1e-4
    assert [tuple(t.shape) for t in outputs.stage_logits] == [
        (1, 1, 2, 3), (1, 1, 4, 6), (1, 1, 8, 12), (1, 1, 64, 96)]
    assert [tuple(t.shape) for t in outputs.gradient_logits] == [
        (1, 1, 2, 3), (1, 1, 4, 6), (1, 1, 8, 12)]
    assert [tuple(t.shape) for t in outputs.gradient_labels] == [(1, 1, 64, 96)] * 3


@pytest.mark.parametrize("label_source", ["gt", "prediction"])
def test_training_step_reaches_every_parameter(weights, label_source):
    model = _model(weights).train().requires_grad_(True)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    gt = (torch.rand(2, 1, 64, 64, generator=generator) > 0.5).float()
    outputs = training_forward(model, x, gt if label_source == "gt" else None)
    if label_source == "gt":
        expected = image_laplacian(x) * gt
        assert all(torch.equal(label, expected) for label in outputs.gradient_labels)
    loss = training_loss(outputs, gt, "General")
    assert {"bce", "iou", "mae", "ssim", "pixel", "gradient", "total"} <= loss.parts.keys()
    loss.total.backward()
    missing = [name for name, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert model.decoder.conv_ms_spvn_4.weight.grad.abs().sum() > 0
    assert model.decoder.gdt_convs_pred_2[0].weight.grad.abs().sum() > 0


def test_training_forward_rejects_folded_models_and_bad_shapes(weights):
    with pytest.raises(ValueError, match="fuse=False"):
        training_forward(birefnet_core.load_model(weights), torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError):
        training_forward(_model(weights), torch.zeros(1, 3, 60, 64))


def test_bf16_autocast_on_the_cpu(weights):
    model = _model(weights).train().requires_grad_(True)
    x, gt = torch.randn(2, 3, 64, 64), torch.ones(2, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = training_forward(model, x, gt)
    loss = training_loss(outputs, gt, "DIS5K", region_only=True)
    assert "bce" not in loss.parts or loss.parts["bce"] == 0
    loss.total.backward()
    assert torch.isfinite(loss.total) and model.bb.patch_embed1.proj.weight.grad is not None


# ---------------------------------------------------------------------- the fine-tuning

def _write_pairs(root: Path, count: int, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        cy, cx, r = rng.uniform(20, 44, 2).tolist() + [rng.uniform(8, 16)]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8) * 255
        image = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        image[mask > 0] = (220, 60, 40)
        Image.fromarray(image).save(root / "images" / f"sample{i}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"sample{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("init") / "init.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, path)
    return path


def test_finetune_writes_checkpoints_that_load_to_the_trained_model(checkpoint, tmp_path):
    data = _write_pairs(tmp_path / "data", 3)
    result = finetune(FinetuneOptions(
        data=data, init=str(checkpoint), out=tmp_path / "out", epochs=2, lr=1e-4, batch_size=2,
        accumulate=2, resolution=64, region_epochs=1, progress=False))
    assert len(result.epoch_losses) == 2 and len(result.step_losses) == 2
    assert all(np.isfinite(result.epoch_losses))
    assert sorted(p.name for p in result.checkpoints) == ["epoch_2.pth", "epoch_2.safetensors"]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        trained = result.model(x)
        initial = birefnet_core.load_model(checkpoint)(x)
        assert (trained - initial).abs().max() > 1e-3          # the weights did change
        for path in result.checkpoints:
            state = torch.load(path) if path.suffix == ".pth" else None
            if state is not None:
                assert state.keys() == manifest(BACKBONE)["keys"].keys()
            unfused = birefnet_core.load_model(path, fuse=False)(x)
            assert torch.equal(unfused, trained)
            # folded BatchNorm vs the trained unfused model: float32 rounding only, as in
            # tests/test_fusion.py; fine-tuned weights are no longer unit-scaled, so 10x that bound
            assert (birefnet_core.load_model(path)(x) - trained).abs().max() < 1e-3
    log = json.loads((tmp_path / "out" / "training_log.json").read_text())
    assert [entry["epoch"] for entry in log["epochs"]] == [1, 2]


def test_cli_runs_one_epoch(checkpoint, tmp_path, capsys):
    data = _write_pairs(tmp_path / "data", 2)
    status = main(["--data", str(data), "--init", str(checkpoint), "--out", str(tmp_path / "o"),
                   "--epochs", "1", "--batch-size", "2", "--resolution", "64",
                   "--format", "safetensors", "--freeze-bn"])
    assert status == 0
    assert (tmp_path / "o" / "epoch_1.safetensors").is_file()
    assert not (tmp_path / "o" / "epoch_1.pth").exists()
    assert "epoch_1.safetensors" in capsys.readouterr().err


def test_cli_reports_empty_and_mismatched_folders(checkpoint, tmp_path, capsys):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    args = ["--init", str(checkpoint), "--out", str(tmp_path / "o"), "--resolution", "64"]
    assert main(["--data", str(tmp_path / "empty"), *args]) == 2
    assert "holds no image files" in capsys.readouterr().err
    data = _write_pairs(tmp_path / "data", 2)
    (data / "masks" / "sample1.png").rename(data / "masks" / "other.png")
    assert main(["--data", str(data), *args]) == 2
    message = capsys.readouterr().err
    assert "sample1" in message and "other" in message
    with pytest.raises(InputError, match="images/ folder"):
        find_pairs(tmp_path / "empty" / "images")
