"""BiRefNetSaveMatte in a real ComfyUI: as a Python object (output folder, counters, the UI
message, the errors that say the fix) and in a server (/history lists the files, /view serves
them, bad settings are refused before anything runs)."""
from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tests.comfyui_inprocess import import_pack
from tests.comfyui_server import PromptRejected, execution_error
from tests.test_matte_writer import disk_full_after

pack = import_pack()
nodes = pack.nodes
matte_module = sys.modules[f"{pack.__name__}.birefnet_core.data.matte"]
import folder_paths  # noqa: E402  (importable once the pack is)

NODE = nodes.BiRefNetSaveMatte
FORMATS = ["prores_4444", "webm_vp9_alpha", "png_sequence_16bit", "png_sequence_8bit",
           "exr_sequence", "ffv1_lossless", "matte_only"]


@pytest.fixture()
def folders(tmp_path, monkeypatch):
    output, temp = tmp_path / "output", tmp_path / "temp"
    output.mkdir()
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(output))
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(temp))
    return output, temp


def clip(count=4, height=24, width=32):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, height, width, 3, generator=generator)
    mask = torch.rand(count, height, width, generator=generator)
    return images, mask


def save(images, mask=None, format="png_sequence_16bit", alpha="straight", fps=24.0,
         prefix="BiRefNet/matte", audio=None) -> dict:
    return NODE().save(images, format, alpha, fps, prefix, mask=mask, audio=audio)


def test_contract_names():
    inputs = NODE.INPUT_TYPES()
    assert inputs["required"]["format"][0] == FORMATS
    assert inputs["required"]["alpha"][0] == ["straight", "premultiplied"]
    assert set(inputs["optional"]) == {"mask", "audio"}
    assert inputs["optional"]["audio"][0] == "AUDIO"
    assert NODE.OUTPUT_NODE is True and NODE.RETURN_TYPES == ()
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["BiRefNetSaveMatte"] == "BiRefNet Save Matte"


@pytest.mark.parametrize("format", FORMATS)
def test_every_format_lands_in_the_output_folder_with_its_ui_message(folders, format):
    output, temp = folders
    images, mask = clip()
    result = save(images, mask, format=format)
    ui = result["ui"]
    assert result["result"] == ()
    files = [output / f["subfolder"] / f["filename"] for f in ui["matte_files"]]
    assert all(f["type"] == "output" for f in ui["matte_files"]) and all(p.is_file() for p in files)
    spec = matte_module.FORMATS[format]
    if spec.sequence:
        assert len(files) == 4 and ui["matte_files"][0]["subfolder"] == "BiRefNet/matte_00001"
        assert files[0].name == f"matte_00001_000000{spec.suffix}"
    else:
        assert [p.relative_to(output).as_posix() for p in files] == \
            [f"BiRefNet/matte_00001_{spec.suffix}"]
    depth = {8: "8-bit", 10: "10-bit", 16: "16-bit", 32: "32-bit float"}[spec.bit_depth]
    suffix = "" if spec.sequence else f"_{spec.suffix}"
    assert ui["text"] == [f"{format}: 4 frames, 32x24, {depth}, BiRefNet/matte_00001{suffix}"]
    preview = ui["images"][0]
    assert preview["type"] == "temp"
    with Image.open(temp / preview["filename"]) as shown:
        assert shown.mode == ("L" if format == "matte_only" else "RGBA")
        alpha = np.asarray(shown)[..., 3] if shown.mode == "RGBA" else np.asarray(shown)
    assert np.array_equal(alpha, np.rint(mask[0].numpy().astype(np.float64) * 255))


def test_counters_never_overwrite(folders):
    output, _ = folders
    images, mask = clip(1)
    (output / "BiRefNet").mkdir()
    (output / "BiRefNet" / "matte_00002_.mov").write_bytes(b"someone else's")
    names = [save(images, mask, format="prores_4444")["ui"]["matte_files"][0]["filename"]
             for _ in range(3)]
    assert names == ["matte_00003_.mov", "matte_00004_.mov", "matte_00005_.mov"]
    assert (output / "BiRefNet" / "matte_00002_.mov").read_bytes() == b"someone else's"


def test_a_still_is_one_file_named_as_save_image_names_it(folders):
    output, _ = folders
    images, mask = clip(1)
    names = [save(images, mask, format=f)["ui"]["matte_files"] for f in ("png_sequence_16bit",
                                                                         "exr_sequence")]
    assert [n[0]["filename"] for n in names] == ["matte_00001_.png", "matte_00002_.exr"]
    assert sorted(p.name for p in (output / "BiRefNet").iterdir()) == ["matte_00001_.png",
                                                                       "matte_00002_.exr"]


def test_rgba_images_carry_their_own_alpha_and_premultiplied_is_colour_times_alpha(folders):
    output, _ = folders
    images, mask = clip(2)
    rgba = torch.cat([images, mask[..., None]], dim=-1)
    entry = save(rgba, None, format="exr_sequence", alpha="premultiplied")["ui"]["matte_files"][1]
    with av.open(str(output / entry["subfolder"] / entry["filename"])) as container:
        decoded = next(container.decode(video=0)).to_ndarray()
    assert np.array_equal(decoded[..., 3], mask[1].numpy())
    assert np.array_equal(decoded[..., :3], (images[1] * mask[1][..., None]).numpy())


def test_audio_from_get_video_components_goes_into_the_clip(folders):
    output, _ = folders
    images, mask = clip(6)
    waveform = torch.sin(torch.arange(8000) / 10.0).repeat(1, 2, 1) * 0.5     # (1, 2, S)
    entry = save(images, mask, format="ffv1_lossless", fps=24.0,
                 audio={"waveform": waveform, "sample_rate": 32000})["ui"]["matte_files"][0]
    with av.open(str(output / entry["subfolder"] / entry["filename"])) as container:
        assert container.streams.audio[0].sample_rate == 32000
        assert len(list(container.decode(video=0))) == 6


# -- bad input: node errors that say the fix, and nothing written ----------------------------
@pytest.mark.parametrize("fps", [0.0, -24.0])
def test_fps_zero(folders, fps):
    assert "fps must be above 0" in NODE.VALIDATE_INPUTS(fps=fps, filename_prefix="x")
    images, mask = clip(1)
    with pytest.raises(ValueError, match="BiRefNetSaveMatte: fps must be above 0.*Get Video"):
        save(images, mask, fps=fps)
    assert list(folders[0].iterdir()) == []


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/tmp/escape", "C:\\x", ""])
def test_prefix_that_leaves_the_output_folder(folders, prefix):
    assert "inside ComfyUI's output folder" in NODE.VALIDATE_INPUTS(fps=24.0,
                                                                     filename_prefix=prefix)
    images, mask = clip(1)
    with pytest.raises(ValueError, match="no '..', no absolute path"):
        save(images, mask, prefix=prefix)
    assert list(folders[0].iterdir()) == []


def test_mask_that_does_not_match_the_frames(folders):
    images, mask = clip(4)
    for wrong in (mask[:3], mask[:, :20], mask[0]):
        with pytest.raises(ValueError, match="does not match the frames.*one per frame"):
            save(images, wrong)
    with pytest.raises(ValueError, match="no alpha to save: connect a mask"):
        save(images, None)
    assert list(folders[0].iterdir()) == []


def test_odd_size_for_vp9(folders):
    images, mask = clip(2, 23, 31)
    with pytest.raises(ValueError, match="BiRefNetSaveMatte: webm_vp9_alpha .* even width and "
                                         "height.*30x22.*prores_4444"):
        save(images, mask, format="webm_vp9_alpha")
    assert list((folders[0] / "BiRefNet").iterdir()) == []


def test_full_disk_leaves_nothing_half_written(folders, monkeypatch):
    monkeypatch.setattr(matte_module, "encode_png", disk_full_after(2, matte_module.encode_png))
    images, mask = clip(4)
    with pytest.raises(ValueError, match="disk is full: free some space.*Nothing was left"):
        save(images, mask, format="png_sequence_8bit")
    assert list((folders[0] / "BiRefNet").iterdir()) == []


def test_without_pyav_the_node_says_what_to_install(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    images, mask = clip(1)
    with pytest.raises(ValueError, match="needs PyAV.*python -m pip install av"):
        save(images, mask, format="prores_4444")
    assert save(images, mask, format="png_sequence_8bit")["ui"]["matte_files"]


def test_the_pack_loads_without_pyav_in_the_2024_comfyui():
    """The 2024 ComfyUI does not require PyAV: with `import av` failing, the pack still loads
    and registers the node (nothing imports PyAV until a clip is written)."""
    import os
    import subprocess
    root = Path(__file__).resolve().parent.parent
    code = ("import sys; sys.modules['av'] = None\n"
            "from tests.comfyui_inprocess import import_pack\n"
            "assert 'BiRefNetSaveMatte' in import_pack().NODE_CLASS_MAPPINGS\n")
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_DIR"}
    subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True, timeout=300)


# -- in a server -------------------------------------------------------------------------------
def _prompt(prefix: str, fps: float = 24.0, format: str = "prores_4444") -> dict:
    return {
        "image": {"class_type": "EmptyImage",
                  "inputs": {"width": 40, "height": 30, "batch_size": 3, "color": 0x3366CC}},
        "mask": {"class_type": "SolidMask", "inputs": {"value": 0.75, "width": 40, "height": 30}},
        "masks": {"class_type": "RepeatImageBatch",
                  "inputs": {"image": ["maskimg", 0], "amount": 3}},
        "maskimg": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}},
        "tomask": {"class_type": "ImageToMask", "inputs": {"image": ["masks", 0],
                                                            "channel": "red"}},
        "save": {"class_type": "BiRefNetSaveMatte",
                 "inputs": {"images": ["image", 0], "mask": ["tomask", 0], "format": format,
                            "alpha": "straight", "fps": fps, "filename_prefix": prefix}},
    }


def test_server_history_lists_the_files_and_view_serves_them(comfyui, tmp_path):
    entry = comfyui.run(_prompt("matte_e2e/clip"))
    assert execution_error(entry) is None, comfyui.log_tail()
    files = entry["outputs"]["save"]["matte_files"]
    assert [(f["subfolder"], f["filename"]) for f in files] == [("matte_e2e", "clip_00001_.mov")]
    data = comfyui.get_bytes(f"/view?filename={files[0]['filename']}&subfolder=matte_e2e"
                             "&type=output")
    (tmp_path / "clip.mov").write_bytes(data)
    with av.open(str(tmp_path / "clip.mov")) as container:
        frames = [f.reformat(format="rgba64le", src_colorspace="ITU709", src_color_range="MPEG")
                  .to_ndarray() / 65535 for f in container.decode(video=0)]
    assert len(frames) == 3
    assert np.abs(np.stack(frames)[..., 3] - 0.75).max() <= 0.5 / 1023 + 1 / 4095 + 1 / 65535
    assert entry["outputs"]["save"]["text"] == ["prores_4444: 3 frames, 40x30, 10-bit, "
                                                "matte_e2e/clip_00001_.mov"]


@pytest.mark.parametrize("fps,prefix,says", [(0.0, "ok", "fps must be above 0"),
                                             (24.0, "../outside", "no '..'")])
def test_server_refuses_bad_settings_before_running(comfyui, fps, prefix, says):
    with pytest.raises(PromptRejected, match=says):
        comfyui.post_prompt(_prompt(prefix, fps=fps))
    assert not (comfyui.output_dir.parent / "outside_00001_.mov").exists()


def _source_video(path: Path, count: int = 6, fps: int = 25, rate: int = 44100) -> None:
    """A small MP4 (MPEG-4 video, AAC stereo) for core's Load Video."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="stereo")
        for index in range(count):
            pixels = np.full((48, 64, 3), 40 * index, np.uint8)
            pixels[:, :32, 0] = 250
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = (0.3 * np.sin(np.arange(int(rate * count / fps)) / 7.0)).astype(np.float32)
        sound = av.AudioFrame.from_ndarray(np.stack([samples, samples]), format="fltp",
                                           layout="stereo")
        sound.sample_rate, sound.pts = rate, 0
        for packet_frame in av.AudioResampler("fltp", "stereo", rate,
                                              frame_size=1024).resample(sound) or []:
            container.mux(audio.encode(packet_frame))
        container.mux(audio.encode(None))


def test_server_takes_fps_and_audio_from_get_video_components(comfyui, tmp_path):
    if "GetVideoComponents" not in comfyui.object_info():
        pytest.skip("Get Video Components is a node of ComfyUI 0.3.30 and later; the 2024 "
                    "ComfyUI has no VIDEO type (tests/run.sh runs this file on 0.21.0 too)")
    _source_video(comfyui.input_dir / "matte_source.mp4")
    prompt = {
        "load": {"class_type": "LoadVideo", "inputs": {"file": "matte_source.mp4"}},
        "parts": {"class_type": "GetVideoComponents", "inputs": {"video": ["load", 0]}},
        "mask": {"class_type": "ImageToMask", "inputs": {"image": ["parts", 0],
                                                          "channel": "red"}},
        "save": {"class_type": "BiRefNetSaveMatte",
                 "inputs": {"images": ["parts", 0], "mask": ["mask", 0],
                            "format": "ffv1_lossless", "alpha": "straight",
                            "fps": ["parts", 2], "audio": ["parts", 1],
                            "filename_prefix": "matte_e2e/from_video"}},
    }
    entry = comfyui.run(prompt)
    assert execution_error(entry) is None, comfyui.log_tail()
    written = entry["outputs"]["save"]["matte_files"][0]
    path = comfyui.output_dir / written["subfolder"] / written["filename"]
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.average_rate == 25 and audio.sample_rate == 44100
        frames = [f.to_ndarray(format="rgba64le") for f in container.decode(video)]
    assert len(frames) == 6
    left = np.stack(frames)[:, :, :28, 3] / 65535          # red 250 there: the mask is ~0.98
    assert np.abs(left - 250 / 255).max() < 0.05
