"""``python -m birefnet_core`` run as a user runs it, in a subprocess, on a synthetic checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av  # PyAV: a ComfyUI requirement (requirements-test.txt); decodes what the CLI wrote
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from birefnet_core import load_model, predict
from birefnet_core.cli import compute_float_mask, main
from birefnet_core.data.images import read_image
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


# -- --format png16 / exr and --clip (issue 24), in-process so the reference mask is bit-identical
FRAME_HEIGHT, FRAME_WIDTH = 48, 64
# Nearest 16-bit level of a float32 value: half a level, plus float32 rounding of x * 65535.
HALF_16_BIT_LEVEL = 0.5 / 65535 + 2 ** -24


@pytest.fixture
def frames(tmp_path: Path) -> list[Path]:
    """Three 48x64 RGB noise frames in a folder named ``shot``."""
    folder = tmp_path / "shot"
    folder.mkdir()
    paths = [folder / f"frame_{index}.png" for index in range(3)]
    for index, path in enumerate(paths):
        Image.fromarray(_noise(FRAME_HEIGHT, FRAME_WIDTH, 3, 10 + index), "RGB").save(path)
    return paths


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> torch.nn.Module:
    return load_model(checkpoint)


def reference(model: torch.nn.Module, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) colour and (H, W) mask, float32, as the CLI computes them in this process."""
    rgb = read_image(path)
    mask = compute_float_mask(model, rgb, RESOLUTION)
    return np.asarray(rgb, dtype=np.float32) / 255.0, mask


def decode(path: Path, pixel_format: str | None = None) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray() if pixel_format is None else
                frame.reformat(format=pixel_format).to_ndarray()
                for frame in container.decode(video=0)]


def cli_args(checkpoint: Path, *inputs: Path, out: Path) -> list[str]:
    return [*map(str, inputs), "-o", str(out), "--model", str(checkpoint), "--resolution",
            str(RESOLUTION), "--device", "cpu", "--dtype", "fp32"]


def test_png16_stills_round_trip(checkpoint: Path, model: torch.nn.Module, frames: list[Path],
                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(cli_args(checkpoint, frames[0], out=out) + ["--format", "png16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frame_0_cutout.png", "frame_0_mask.png"]
    colour, mask = reference(model, frames[0])
    assert mask.std() > 0                                               # a real, varied mask
    [grey] = decode(out / "frame_0_mask.png")
    [cutout] = decode(out / "frame_0_cutout.png")
    assert grey.dtype == np.uint16 and grey.shape == (FRAME_HEIGHT, FRAME_WIDTH)
    assert cutout.dtype == np.uint16 and cutout.shape == (FRAME_HEIGHT, FRAME_WIDTH, 4)
    assert np.abs(grey / 65535.0 - mask).max() <= HALF_16_BIT_LEVEL
    assert np.array_equal(cutout[..., 3], grey)
    assert np.array_equal(cutout[..., :3], np.rint(colour.astype(np.float64) * 65535))
    # more than 256 levels: a 16-bit file, not an 8-bit one padded
    assert np.any(grey % 257 != 0)
    # a second run replaces the files, as the 8-bit outputs are replaced
    assert main(cli_args(checkpoint, frames[0], out=out) + ["--format", "png16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frame_0_cutout.png", "frame_0_mask.png"]


@pytest.mark.parametrize("alpha", ["straight", "premultiplied"])
def test_exr_still_is_exact(checkpoint: Path, model: torch.nn.Module, frames: list[Path],
                            tmp_path: Path, alpha: str) -> None:
    out = tmp_path / "out"
    assert main(cli_args(checkpoint, frames[1], out=out) + ["--format", "exr",
                                                            "--alpha", alpha]) == 0
    assert [p.name for p in out.iterdir()] == ["frame_1_cutout.exr"]
    colour, mask = reference(model, frames[1])
    [rgba] = decode(out / "frame_1_cutout.exr")
    assert rgba.dtype == np.float32
    assert np.array_equal(rgba[..., 3], mask)
    expected = colour * mask[..., None] if alpha == "premultiplied" else colour
    assert np.array_equal(rgba[..., :3], expected)


@pytest.mark.parametrize("clip, alpha", [("ffv1_lossless", "straight"),
                                         ("png_sequence_16bit", "premultiplied")])
def test_a_folder_of_frames_as_one_clip(checkpoint: Path, model: torch.nn.Module,
                                        frames: list[Path], tmp_path: Path, clip: str,
                                        alpha: str) -> None:
    out = tmp_path / "out"
    args = cli_args(checkpoint, frames[0].parent, out=out) + ["--clip", clip, "--fps", "30",
                                                             "--alpha", alpha]
    assert main(args) == 0
    if clip == "ffv1_lossless":
        assert [p.name for p in out.iterdir()] == ["shot.mkv"]
        with av.open(str(out / "shot.mkv")) as container:
            assert container.streams.video[0].average_rate == 30
        decoded = decode(out / "shot.mkv", "rgba64le")
    else:
        assert [p.name for p in out.iterdir()] == ["shot"]
        names = sorted(p.name for p in (out / "shot").iterdir())
        assert names == [f"shot_{index:06d}.png" for index in range(3)]
        decoded = [frame for name in names for frame in decode(out / "shot" / name)]
    assert len(decoded) == 3
    for path, rgba in zip(frames, decoded):
        colour, mask = reference(model, path)
        expected = colour * mask[..., None] if alpha == "premultiplied" else colour
        # 16 bits stored losslessly: each value is the nearest level of the float written
        assert np.array_equal(rgba[..., 3], np.rint(mask.astype(np.float64) * 65535)), path
        assert np.abs(rgba[..., :3] / 65535.0 - expected).max() <= HALF_16_BIT_LEVEL, path


def test_a_clip_is_never_replaced(checkpoint: Path, frames: list[Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = cli_args(checkpoint, frames[0].parent, out=out) + ["--clip", "png_sequence_16bit"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in (out / "shot").iterdir()}
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out / 'shot'} already exists" in err and "choose another -o folder" in err
    assert {p.name: p.read_bytes() for p in (out / "shot").iterdir()} == before


@pytest.mark.parametrize("options, message", [
    (["--format", "exr", "--clip", "prores_4444"], "leave out --format exr"),
    (["--fps", "24"], "--fps is the frame rate of a --clip"),
    (["--alpha", "premultiplied"], "--alpha premultiplied needs --format png16 or exr"),
    (["--clip", "matte_only", "--alpha", "premultiplied"], "matte_only writes the mask alone"),
])
def test_bad_option_combinations_are_usage_errors(
        frames: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        options: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([str(frames[0]), "-o", str(tmp_path / "out"), *options])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_clip_refuses_frames_of_another_size_and_a_bad_fps(
        checkpoint: Path, frames: list[Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    odd = frames[0].parent / "frame_9.png"
    Image.fromarray(_noise(FRAME_HEIGHT + 2, FRAME_WIDTH, 3, 20), "RGB").save(odd)
    out = tmp_path / "out"
    assert main(cli_args(checkpoint, frames[0].parent, out=out) + ["--clip", "ffv1_lossless"]) == 2
    err = capsys.readouterr().err
    assert f"{odd} is 64x50 but the clip began with {frames[0]} at 64x48" in err
    assert list(out.iterdir()) == []                            # nothing half-written is left
    odd.unlink()
    assert main(cli_args(checkpoint, frames[0].parent, out=out) + ["--clip", "ffv1_lossless",
                                                                   "--fps", "0"]) == 2
    assert "fps must be a frame rate above 0" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_without_pyav_exr_stops_before_the_model_loads(
        frames: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)              # import av raises ImportError
    missing_model = tmp_path / "never_loaded.safetensors"
    assert main([str(frames[0]), "-o", str(tmp_path / "out"), "--model", str(missing_model),
                 "--format", "exr"]) == 2
    err = capsys.readouterr().err
    assert "python -m pip install av" in err and str(missing_model) not in err
    assert not any((tmp_path / "out").iterdir())
