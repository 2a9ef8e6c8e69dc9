"""``python -m birefnet_core`` run as a user runs it, in a subprocess, on a synthetic checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from birefnet_core import load_model, predict
from tests.synthetic import synthetic_state_dict

ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny_pvt.safetensors"
    state = {k: v.contiguous() for k, v in synthetic_state_dict("pvt_v2_b0").items()}
    save_file(state, str(path))
    return path


def _noise(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """RGB, RGBA and greyscale PNGs in a folder (beside a text file), a palette PNG outside."""
    folder = tmp_path / "in"
    folder.mkdir()
    paths = {"rgb": folder / "photo.png", "rgba": folder / "sticker.png",
             "grey": folder / "scan.png", "palette": tmp_path / "icon.png"}
    Image.fromarray(_noise(50, 80, 3, 1), "RGB").save(paths["rgb"])
    Image.fromarray(_noise(40, 60, 4, 2), "RGBA").save(paths["rgba"])
    Image.fromarray(_noise(70, 45, 1, 3)[..., 0], "L").save(paths["grey"])
    Image.fromarray(_noise(33, 47, 3, 4), "RGB").quantize(16).save(paths["palette"])
    (folder / "notes.txt").write_text("not an image, and not an image suffix either")
    return paths


def run_cli(*args: str | os.PathLike, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    command = [sys.executable, "-m", "birefnet_core", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=600)


def expected_mask(model: torch.nn.Module, path: Path) -> np.ndarray:
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGBA").convert("RGB"), dtype=np.float32) / 255.0
    batch = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
    mask = predict(model, batch, resolution=RESOLUTION)[0, 0].numpy()
    return mask * 255.0


def test_masks_and_cutouts(checkpoint: Path, images: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "nested"
    result = run_cli(images["rgb"].parent, images["palette"], "-o", out, "--model", checkpoint,
                     "--resolution", str(RESOLUTION), "--device", "cpu",
                     env={"BIREFNET_MODELS_DIR": str(tmp_path / "models")})
    assert result.returncode == 0, result.stderr
    model = load_model(checkpoint)
    produced = sorted(p.name for p in out.iterdir())
    assert produced == sorted(f"{p.stem}_{kind}.png" for p in images.values()
                              for kind in ("mask", "cutout"))
    for path in images.values():
        with Image.open(path) as source:
            size, source_rgb = source.size, np.asarray(source.convert("RGBA").convert("RGB"))
        mask = Image.open(out / f"{path.stem}_mask.png")
        cutout = Image.open(out / f"{path.stem}_cutout.png")
        assert (mask.mode, mask.size) == ("L", size)
        assert (cutout.mode, cutout.size) == ("RGBA", size)
        mask_values = np.asarray(mask).astype(np.float64)
        # the PNG holds the mask in 8 bits: under one level from the float mask however it is
        # quantised; float32 differences between batch sizes are ~1e-5 levels
        assert np.abs(mask_values - expected_mask(model, path)).max() <= 1.0, path.name
        cutout_values = np.asarray(cutout)
        assert np.array_equal(cutout_values[..., 3], np.asarray(mask))
        assert np.array_equal(cutout_values[..., :3], source_rgb)
    assert mask_values.std() > 0  # a real, non-constant mask came out


def test_unreadable_image_is_skipped(checkpoint: Path, images: dict[str, Path],
                                     tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing sensible")
    out = tmp_path / "out"
    result = run_cli(broken, images["rgb"], tmp_path / "absent.jpg", "-o", out,
                     "--model", checkpoint, "--resolution", "64x64")
    assert result.returncode == 1
    assert "broken.png" in result.stderr and "absent.jpg" in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "photo_mask.png").is_file() and (out / "photo_cutout.png").is_file()
    assert not (out / "broken_mask.png").exists()


def test_offline_missing_model_exits_2(tmp_path: Path, images: dict[str, Path]) -> None:
    models_dir = tmp_path / "models"
    result = run_cli(images["rgb"], "-o", tmp_path / "out", "--model", "BiRefNet_lite",
                     env={"BIREFNET_MODELS_DIR": str(models_dir)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(models_dir / "BiRefNet_lite.safetensors") in result.stderr
    assert "ZhengPeng7/BiRefNet_lite/resolve/main/model.safetensors" in result.stderr
    assert not models_dir.exists() or not any(models_dir.iterdir())


def test_missing_checkpoint_path_exits_2(tmp_path: Path, images: dict[str, Path]) -> None:
    missing = tmp_path / "nowhere" / "finetune.safetensors"
    result = run_cli(images["rgb"], "-o", tmp_path / "out", "--model", missing)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_resolution_is_a_usage_error(tmp_path: Path, images: dict[str, Path]) -> None:
    result = run_cli(images["rgb"], "-o", tmp_path / "out", "--resolution", "100")
    assert result.returncode == 2 and "multiples of 32" in result.stderr


def test_int8_and_compile_options(checkpoint: Path, images: dict[str, Path],
                                  tmp_path: Path) -> None:
    """--dtype int8 runs and says so; --compile says what happened: "compiled" where inductor
    built the graphs, "fell back to eager (why)" where it could not (forced here by naming a
    C++ compiler that does not exist, with an empty inductor cache); both write the plain
    model's masks up to rounding."""
    plain = run_cli(images["rgb"], "-o", tmp_path / "plain", "--model", checkpoint,
                    "--resolution", RESOLUTION, "--device", "cpu")
    int8 = run_cli(images["rgb"], "-o", tmp_path / "int8", "--model", checkpoint,
                   "--resolution", RESOLUTION, "--device", "cpu", "--dtype", "int8")
    compiled = run_cli(images["rgb"], "-o", tmp_path / "compiled", "--model", checkpoint,
                       "--resolution", RESOLUTION, "--device", "cpu", "--compile")
    no_compiler = {"CXX": str(tmp_path / "no-such-c++"),
                   "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache")}
    fell_back = run_cli(images["rgb"], "-o", tmp_path / "fell_back", "--model", checkpoint,
                        "--resolution", RESOLUTION, "--device", "cpu", "--compile",
                        env=no_compiler)
    for done in (plain, int8, compiled, fell_back):
        assert done.returncode == 0, done.stderr
    assert "int8 linear layers" in int8.stderr
    assert "torch.compile: compiled" in compiled.stderr, compiled.stderr
    assert "fell back" not in compiled.stderr
    assert "torch.compile: fell back to eager" in fell_back.stderr, fell_back.stderr
    assert "torch.compile: compiled" not in fell_back.stderr

    def mask(folder: str) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / folder / "photo_mask.png"), dtype=np.int16)
    assert np.abs(mask("compiled") - mask("plain")).max() <= 1          # 8-bit rounding
    assert np.array_equal(mask("fell_back"), mask("plain"))            # the same eager model
    assert 0 < np.abs(mask("int8") - mask("plain")).max() <= 0.02 * 255 + 1  # README's bound
