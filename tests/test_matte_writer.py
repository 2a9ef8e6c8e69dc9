"""birefnet_core.data.write_matte: every format decoded again with PyAV and compared with what
went in, within the format's own step; streaming, atomic writes and the errors that say the fix.

The clip: 8 frames of 64x48 (smooth colour ramps that move, an alpha with a soft edge, fully
transparent and fully opaque parts, and the 0.9999999 a mask inversion leaves).
"""
from __future__ import annotations

import errno
import sys
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import av  # PyAV: a ComfyUI requirement (requirements-test.txt)

from birefnet_core.data import matte as matte_module  # noqa: E402
from birefnet_core.data import matte_av, write_matte  # noqa: E402
from birefnet_core.data.matte import MatteWriteError, MissingDependencyError  # noqa: E402
from birefnet_core.errors import InputError  # noqa: E402

COUNT, HEIGHT, WIDTH = 8, 48, 64
# Nearest 16-bit level, from float32 input (x * 65535 is rounded to float32 first: 2**-24).
HALF_16_BIT_LEVEL = 0.5 / 65535 + 2 ** -24
# ProRes 4444 alpha: the writer rounds to 10 bits (0.5 / 1023); FFmpeg's decoder returns it at
# 12 bits (the 16-bit stored value truncated: under 1 / 4095); rgba64 output adds 1 / 65535.
PRORES_ALPHA_BOUND = 0.5 / 1023 + 1 / 4095 + 1 / 65535
# ProRes colour is DCT-coded (lossy) in 10-bit BT.709 YUV. YUV rounding alone errs up to 0.0016
# (half a 10-bit step of Y plus 1.86 x half a step of Cb for blue); measured on this clip: max
# 0.0025 straight, 0.0042 premultiplied (the sharper edge), PSNR 66.6 dB. Bounds: 1.5 8-bit
# levels and PSNR 63 dB (a BT.601/709 mix-up or a lost range flag errs by more than 0.02).
PRORES_COLOUR_BOUND = 1.5 / 255
PRORES_COLOUR_PSNR_DB = 63.0
# VP9 is lossy in colour and alpha: bounds are PSNRs measured on this clip with libvpx in PyAV
# 18.1.1 (alpha 52.0 dB, colour 45.4 dB straight / 46.0 dB premultiplied) less 3 dB; an alpha
# that is lost decodes as opaque (2.8 dB here).
VP9_ALPHA_PSNR_DB = 49.0
VP9_COLOUR_PSNR_DB = 42.0


def clip(count: int = COUNT, height: int = HEIGHT, width: int = WIDTH):
    """frames (T, H, W, 3) and alpha (T, H, W), float32."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames, alphas = [], []
    for t in range(count):
        frames.append(np.stack([0.1 + 0.8 * xx / width, 0.2 + 0.6 * yy / height,
                                np.full_like(xx, 0.25 + 0.06 * t)], axis=-1))
        alpha = np.clip((xx - 8 - 2 * t) / 24, 0, 1) * np.clip((yy - 4) / 20, 0, 1)
        alpha[-4:, -4:] = 0.9999999                 # what inverting a mask of 1e-7 leaves
        alphas.append(alpha)
    return np.stack(frames).astype(np.float32), np.stack(alphas).astype(np.float32)


def decode_clip(path: Path, decoder: str | None = None) -> list:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if decoder is None:
            return list(container.decode(stream))
        context = av.CodecContext.create(decoder, "r")   # libvpx reads VP9's alpha side data
        return [frame for packet in container.demux(stream) for frame in context.decode(packet)]


def to_rgba(frames: list, yuv: bool) -> np.ndarray:
    """Decoded frames -> (T, H, W, 4) float64 in [0, 1]."""
    out = []
    for frame in frames:
        if yuv:
            frame = frame.reformat(format="rgba64le", src_colorspace="ITU709",
                                   src_color_range="MPEG", interpolation="BICUBLIN")
        else:
            frame = frame.reformat(format="rgba64le")
        out.append(frame.to_ndarray().astype(np.float64) / 65535)
    return np.stack(out)


def decode_stills(folder: Path, suffix: str) -> np.ndarray:
    files = sorted(folder.glob(f"*{suffix}"))
    decoded = []
    for path in files:
        with av.open(str(path)) as container:
            decoded.append(next(container.decode(video=0)).to_ndarray())
    return np.stack(decoded)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def levels(x: np.ndarray, bits: int) -> np.ndarray:
    return np.rint(x.astype(np.float64) * ((1 << bits) - 1))


def expected_colour(frames, alpha, premultiply: bool) -> np.ndarray:
    return frames * alpha[..., None] if premultiply else frames


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("premultiply", [False, True])
def test_png16_is_within_half_a_16_bit_level(tmp_path, premultiply):
    frames, alpha = clip()
    written = write_matte(tmp_path / "m", frames, alpha, format="png_sequence_16bit", fps=24,
                          premultiply=premultiply)
    assert written.frames == COUNT and len(written.files) == COUNT
    assert written.files[0].name == "m_000000.png"
    decoded = decode_stills(tmp_path / "m", ".png").astype(np.float64) / 65535   # rgba64be
    colour = expected_colour(frames, alpha, premultiply)
    assert np.abs(decoded[..., 3] - alpha).max() <= HALF_16_BIT_LEVEL
    assert np.abs(decoded[..., :3] - colour).max() <= HALF_16_BIT_LEVEL


@pytest.mark.parametrize("premultiply", [False, True])
def test_png8_rounds_to_the_nearest_level(tmp_path, premultiply):
    frames, alpha = clip()
    write_matte(tmp_path / "m", frames, alpha, format="png_sequence_8bit", fps=24,
                premultiply=premultiply)
    decoded = decode_stills(tmp_path / "m", ".png")                                # rgba
    assert np.array_equal(decoded[..., 3], levels(alpha, 8))
    assert decoded[:, -1, -1, 3].min() == 255             # 0.9999999: 255, not Save Image's 254
    colour = expected_colour(frames, alpha, premultiply)
    assert np.array_equal(decoded[..., :3], levels(colour, 8))


@pytest.mark.parametrize("premultiply", [False, True])
def test_exr_is_exact_float32(tmp_path, premultiply):
    frames, alpha = clip()
    write_matte(tmp_path / "m", frames, alpha, format="exr_sequence", fps=24,
                premultiply=premultiply)
    decoded = decode_stills(tmp_path / "m", ".exr")                                # float32
    colour = expected_colour(frames, alpha, premultiply).astype(np.float32)
    assert decoded.dtype == np.float32
    assert np.array_equal(decoded[..., 3], alpha)
    assert np.array_equal(decoded[..., :3], colour)


@pytest.mark.parametrize("premultiply", [False, True])
def test_ffv1_is_exact_at_16_bits(tmp_path, premultiply):
    frames, alpha = clip()
    written = write_matte(tmp_path / "m", frames, alpha, format="ffv1_lossless", fps=24,
                          premultiply=premultiply)
    assert written.path == tmp_path / "m.mkv"
    decoded = decode_clip(written.path)
    assert decoded[0].format.name == "gbrap16le"
    rgba = to_rgba(decoded, yuv=False) * 65535
    colour = expected_colour(frames, alpha, premultiply)
    assert np.array_equal(rgba[..., 3], levels(alpha, 16))
    assert np.array_equal(rgba[..., :3], levels(colour, 16))


@pytest.mark.parametrize("premultiply", [False, True])
def test_prores_4444_alpha_within_10_bits(tmp_path, premultiply):
    frames, alpha = clip()
    written = write_matte(tmp_path / "m", frames, alpha, format="prores_4444", fps=24,
                          premultiply=premultiply)
    with av.open(str(written.path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "prores" and stream.codec_context.colorspace == 1
    rgba = to_rgba(decode_clip(written.path), yuv=True)
    assert len(rgba) == COUNT
    assert np.abs(rgba[..., 3] - alpha).max() <= PRORES_ALPHA_BOUND
    colour = expected_colour(frames, alpha, premultiply)
    assert np.abs(rgba[..., :3] - colour).max() <= PRORES_COLOUR_BOUND
    assert psnr(rgba[..., :3], colour) >= PRORES_COLOUR_PSNR_DB


@pytest.mark.parametrize("premultiply", [False, True])
def test_vp9_alpha_is_lossy_but_bounded_by_measured_psnr(tmp_path, premultiply):
    frames, alpha = clip()
    written = write_matte(tmp_path / "m", frames, alpha, format="webm_vp9_alpha", fps=24,
                          premultiply=premultiply)
    decoded = decode_clip(written.path, "libvpx-vp9")
    assert decoded[0].format.name == "yuva420p"
    rgba = to_rgba(decoded, yuv=True)
    assert psnr(rgba[..., 3], alpha) >= VP9_ALPHA_PSNR_DB
    colour = expected_colour(frames, alpha, premultiply)
    assert psnr(rgba[..., :3], colour) >= VP9_COLOUR_PSNR_DB


def test_matte_only_is_the_alpha_as_16_bit_grey(tmp_path):
    _, alpha = clip()
    write_matte(tmp_path / "m", None, alpha, format="matte_only", fps=24, premultiply=False)
    decoded = decode_stills(tmp_path / "m", ".png")
    assert decoded.shape == alpha.shape and decoded.dtype == np.uint16            # gray16be
    assert np.array_equal(decoded, levels(alpha, 16))


@pytest.mark.parametrize("format", ["prores_4444", "ffv1_lossless", "png_sequence_16bit"])
def test_odd_sizes_and_rgba_frames_without_a_mask(tmp_path, format):
    frames, alpha = clip(3, 47, 63)
    rgba = np.concatenate([frames, alpha[..., None]], axis=-1)
    written = write_matte(tmp_path / "m", rgba, None, format=format, fps=24, premultiply=False)
    assert (written.width, written.height, written.frames) == (63, 47, 3)
    if written.path.is_dir():
        decoded = decode_stills(written.path, ".png").astype(np.float64) / 65535
    else:
        decoded = to_rgba(decode_clip(written.path), yuv=format == "prores_4444")
    assert decoded.shape == (3, 47, 63, 4)
    assert np.abs(decoded[..., 3] - alpha).max() <= PRORES_ALPHA_BOUND


@pytest.mark.parametrize("format", ["png_sequence_16bit", "exr_sequence", "matte_only"])
def test_a_single_frame_is_one_file_beside_where_the_folder_would_be(tmp_path, format):
    frames, alpha = clip(1)
    written = write_matte(tmp_path / "still", frames[0], alpha[0], format=format, fps=24,
                          premultiply=False)
    suffix = matte_module.FORMATS[format].suffix
    assert written.path == tmp_path / f"still{suffix}" and written.files == [written.path]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"still{suffix}"]
    with av.open(str(written.path)) as container:
        decoded = next(container.decode(video=0)).to_ndarray()
    top = 1.0 if format == "exr_sequence" else 65535.0
    matte = decoded if format == "matte_only" else decoded[..., 3]
    assert np.abs(matte / top - alpha[0]).max() <= HALF_16_BIT_LEVEL


def test_frame_rate_is_stored_exactly(tmp_path):
    frames, alpha = clip(2)
    written = write_matte(tmp_path / "m", frames, alpha, format="ffv1_lossless",
                          fps=30000 / 1001, premultiply=False)
    with av.open(str(written.path)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)


# -- streaming -----------------------------------------------------------------------------------
def test_batches_of_any_split_give_the_same_files_and_are_written_as_they_arrive(tmp_path):
    frames, alpha = clip()
    whole = write_matte(tmp_path / "whole", frames, alpha, format="png_sequence_16bit", fps=24,
                        premultiply=False)
    seen_on_disk = []

    def batches():
        for start, stop in ((0, 3), (3, 4), (4, 8)):
            partial = [p for p in tmp_path.iterdir() if p.name.startswith(".split")]
            seen_on_disk.append(len(list(partial[0].iterdir())) if partial else 0)
            yield frames[start:stop]

    split = write_matte(tmp_path / "split", batches(), iter([alpha[:5], alpha[5:]]),
                        format="png_sequence_16bit", fps=24, premultiply=False)
    assert seen_on_disk == [0, 3, 4]          # each batch was encoded before the next was asked
    for a, b in zip(whole.files, split.files):
        assert a.read_bytes() == b.read_bytes()


def test_torch_tensors_are_taken(tmp_path):
    torch = pytest.importorskip("torch")
    frames, alpha = clip(2)
    written = write_matte(tmp_path / "m", torch.from_numpy(frames), torch.from_numpy(alpha),
                          format="png_sequence_8bit", fps=24, premultiply=False)
    assert np.array_equal(decode_stills(written.path, ".png")[..., 3], levels(alpha, 8))


# -- audio ---------------------------------------------------------------------------------------
def _tone(seconds: float, rate: int = 44100, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)])


@pytest.mark.parametrize("format,codec", [("prores_4444", "pcm_s16le"),
                                          ("ffv1_lossless", "flac"),
                                          ("webm_vp9_alpha", "opus")])
def test_audio_is_muxed_beside_the_frames(tmp_path, format, codec):
    frames, alpha = clip()
    samples = _tone(COUNT / 24)
    written = write_matte(tmp_path / "m", frames, alpha, format=format, fps=24,
                          premultiply=False, audio=(samples, 44100))
    with av.open(str(written.path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == codec
        decoded = np.concatenate([f.to_ndarray().reshape(2, -1) if f.format.is_planar
                                  else f.to_ndarray().reshape(-1, 2).T
                                  for f in container.decode(stream)], axis=1)
    if codec != "opus":                                    # lossless at 16 bits
        scale = 32768.0 if decoded.dtype == np.int16 else 2 ** 31 if decoded.dtype == np.int32 \
            else 1.0
        assert np.abs(decoded / scale - samples).max() <= 1 / 32767
    else:                                                   # resampled to 48 kHz, lossy
        assert abs(decoded.shape[1] / 48000 - COUNT / 24) < 0.03


def test_a_sequence_gets_its_audio_as_wav(tmp_path):
    frames, alpha = clip(2)
    samples = _tone(0.1, 16000, 1)
    written = write_matte(tmp_path / "m", frames, alpha, format="png_sequence_8bit", fps=24,
                          premultiply=False, audio=(samples, 16000))
    with wave.open(str(written.path / "m.wav")) as file:
        assert (file.getnchannels(), file.getframerate()) == (1, 16000)
        pcm = np.frombuffer(file.readframes(file.getnframes()), "<i2")
    assert np.abs(pcm / 32767 - samples[0]).max() <= 0.5 / 32767 + 1e-9


# -- errors, atomicity ---------------------------------------------------------------------------
def test_odd_size_for_4_2_0_is_refused_with_the_fix(tmp_path):
    frames, alpha = clip(2, 47, 63)
    with pytest.raises(InputError, match=r"even width and height.*62x46.*prores_4444"):
        write_matte(tmp_path / "m", frames, alpha, format="webm_vp9_alpha", fps=24,
                    premultiply=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [0, -1, float("nan")])
def test_fps_must_be_positive(tmp_path, fps):
    frames, alpha = clip(1)
    with pytest.raises(InputError, match="fps must be a frame rate above 0"):
        write_matte(tmp_path / "m", frames, alpha, format="prores_4444", fps=fps,
                    premultiply=False)


def test_alpha_that_does_not_match_is_refused(tmp_path):
    frames, alpha = clip()
    with pytest.raises(InputError, match="differ in length"):
        write_matte(tmp_path / "a", frames, alpha[:5], format="png_sequence_8bit", fps=24,
                    premultiply=False)
    with pytest.raises(InputError, match="the alpha is 32x48 but the image is 64x48"):
        write_matte(tmp_path / "b", frames, alpha[..., :32], format="png_sequence_8bit", fps=24,
                    premultiply=False)
    with pytest.raises(InputError, match="no alpha: connect a mask"):
        write_matte(tmp_path / "c", frames, None, format="png_sequence_8bit", fps=24,
                    premultiply=False)
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites(tmp_path):
    frames, alpha = clip(1)
    (tmp_path / "m.mov").write_bytes(b"keep")
    with pytest.raises(InputError, match="never overwrites"):
        write_matte(tmp_path / "m", frames, alpha, format="prores_4444", fps=24,
                    premultiply=False)
    assert (tmp_path / "m.mov").read_bytes() == b"keep"


def disk_full_after(calls: int, function):
    """``function`` that raises ENOSPC from its call number ``calls + 1`` on (a disk that
    fills up mid-clip); shared with the node tests."""
    count = {"n": 0}

    def failing(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return function(*args, **kwargs)
    return failing


@pytest.mark.parametrize("format", ["prores_4444", "webm_vp9_alpha", "ffv1_lossless",
                                    "png_sequence_16bit", "exr_sequence"])
def test_a_full_disk_leaves_nothing_under_the_final_name(tmp_path, monkeypatch, format):
    frames, alpha = clip()
    if matte_module.FORMATS[format].sequence:
        name = "write_exr" if format == "exr_sequence" else "encode_png"
        monkeypatch.setattr(matte_module, name, disk_full_after(3, getattr(matte_module, name)))
    else:
        monkeypatch.setattr(matte_av.ClipWriter, "write",
                            disk_full_after(3, matte_av.ClipWriter.write))
    with pytest.raises(MatteWriteError, match="disk is full.*Nothing was left"):
        write_matte(tmp_path / "m", frames, alpha, format=format, fps=24, premultiply=False)
    assert list(tmp_path.iterdir()) == []


def test_without_pyav_clips_say_what_to_install_and_png_still_works(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)           # `import av` raises ImportError
    frames, alpha = clip(2)
    with pytest.raises(MissingDependencyError, match="pip install av"):
        write_matte(tmp_path / "m", frames, alpha, format="prores_4444", fps=24,
                    premultiply=False)
    assert list(tmp_path.iterdir()) == []
    written = write_matte(tmp_path / "p", frames, alpha, format="png_sequence_16bit", fps=24,
                          premultiply=False)
    assert len(written.files) == 2
