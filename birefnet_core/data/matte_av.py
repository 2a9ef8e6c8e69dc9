"""The PyAV (FFmpeg) side of matte writing: ProRes 4444, VP9 with alpha and FFV1 clips (with
optional audio) and OpenEXR frames. PyAV is imported only when one of these is written."""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BiRefNetError

# How long a video clip's audio runs ahead of its frames before the next chunk is written.
_AUDIO_CHUNK_S = 0.5


class MissingDependencyError(BiRefNetError, ImportError):
    """An optional package (PyAV) that the chosen format needs is not installed."""


def require_av(format_name: str) -> Any:
    try:
        import av
    except ImportError as error:
        raise MissingDependencyError(
            f"the {format_name} format needs PyAV (the `av` package, FFmpeg's encoders): install "
            "it into the Python that runs ComfyUI with `python -m pip install av` (ComfyUI "
            "0.3.30 and later require it); png_sequence_16bit, png_sequence_8bit and "
            "matte_only work without it") from error
    return av


@dataclass(frozen=True)
class ClipCodec:
    container: str               # FFmpeg muxer name
    codec: str
    pix_fmt: str                 # what the encoder stores
    source_bits: int             # 8: frames handed over as rgba, 16: as rgba64le
    options: dict[str, str] = field(default_factory=dict)
    audio_codec: str = "pcm_s16le"
    yuv: bool = True             # stored as BT.709 limited-range YUV (tagged so)
    alpha_bits: int = 8          # of the stored alpha plane (YUV formats)


CLIP_CODECS = {
    # alpha_bits 16: the 10-bit alpha plane is kept whole (prores_ks can store 16-bit alpha).
    "prores_4444": ClipCodec("mov", "prores_ks", "yuva444p10le", 16,
                             {"profile": "4444", "alpha_bits": "16", "vendor": "apl0"}, alpha_bits=10),
    # crf 12, constant quality; auto-alt-ref off: libvpx cannot keep alpha with alt-ref frames.
    "webm_vp9_alpha": ClipCodec("webm", "libvpx-vp9", "yuva420p", 8,
                                {"crf": "12", "b": "0", "deadline": "good", "cpu-used": "4",
                                 "row-mt": "1", "auto-alt-ref": "0", "lag-in-frames": "0"},
                                audio_codec="libopus"),
    # 16-bit planar RGBA: lossless, no colour conversion.
    "ffv1_lossless": ClipCodec("matroska", "ffv1", "gbrap16le", 16,
                               {"level": "3", "slicecrc": "1", "g": "1"},
                               audio_codec="flac", yuv=False),
}


_ROWS = 64                  # rows quantised at a time (float64 scratch stays small)


def quantise(x: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] floats (H, W, ...) -> the nearest of 2**bits levels, computed in float64 so that
    values next to a half level round the right way (0.9999999 -> 255 at 8 bits)."""
    top = float((1 << bits) - 1)
    out = np.empty(x.shape, np.uint8 if bits <= 8 else np.uint16)
    for start in range(0, x.shape[0], _ROWS):
        out[start:start + _ROWS] = np.rint(x[start:start + _ROWS].astype(np.float64) * top)
    return out


def _set_alpha_plane(frame, alpha: np.ndarray, bits: int) -> None:
    """Replace the alpha plane swscale made (it truncates 16 -> 10 bits) by the nearest level."""
    plane = frame.planes[3]
    levels = quantise(alpha, bits)                                     # (H, W)
    padded = np.zeros((frame.height, plane.line_size // levels.itemsize), levels.dtype)
    padded[:, :frame.width] = levels
    plane.update(padded.astype(levels.dtype.newbyteorder("<"), copy=False).tobytes())


def frame_rate(fps: float) -> Fraction:
    """fps as the exact fraction a container stores (29.97002997 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


class ClipWriter:
    """One video file (and its audio), written frame by frame."""

    def __init__(self, path: Path, format_name: str, width: int, height: int, fps: float,
                 audio: tuple[np.ndarray, int] | None) -> None:
        av = require_av(format_name)
        self.av = av
        self.spec = CLIP_CODECS[format_name]
        self.container = av.open(str(path), "w", format=self.spec.container)
        self.stream = self._video_stream(width, height, frame_rate(fps))
        self.fps = fps
        self.count = 0
        self.audio = _AudioTrack(av, self.container, self.spec.audio_codec, *audio) \
            if audio is not None else None

    def _video_stream(self, width: int, height: int, rate: Fraction):
        stream = self.container.add_stream(self.spec.codec, rate=rate, options=self.spec.options)
        stream.width, stream.height, stream.pix_fmt = width, height, self.spec.pix_fmt
        if self.spec.yuv:
            context = stream.codec_context
            context.colorspace, context.color_primaries, context.color_trc = 1, 1, 1  # BT.709
            context.color_range = 1                                                   # limited
        return stream

    def write(self, rgba: np.ndarray) -> None:
        """rgba (H, W, 4) float in [0, 1]."""
        bits = self.spec.source_bits
        frame = self.av.VideoFrame.from_ndarray(
            quantise(rgba, bits), format="rgba" if bits == 8 else "rgba64le")
        if self.spec.yuv:
            frame = frame.reformat(format=self.spec.pix_fmt, dst_colorspace="ITU709",
                                   dst_color_range="MPEG", interpolation="BICUBLIN")
            _set_alpha_plane(frame, rgba[..., 3], self.spec.alpha_bits)
        else:
            frame = frame.reformat(format=self.spec.pix_fmt)
        frame.pts = self.count
        self.container.mux(self.stream.encode(frame))
        self.count += 1
        if self.audio is not None:
            self.audio.write_until(self.count / self.fps + _AUDIO_CHUNK_S)

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        if self.audio is not None:
            self.audio.write_until(None)
        self.container.close()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:                   # the file is deleted next; its state does not matter
            pass


class _AudioTrack:
    """A whole waveform (channels, samples) muxed in chunks as the video advances."""

    def __init__(self, av: Any, container: Any, codec: str, samples: np.ndarray,
                 rate: int) -> None:
        self.av = av
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)     # (C, S)
        self.rate = int(rate)
        layout = "mono" if self.samples.shape[0] == 1 else "stereo"
        self.samples = self.samples[:2]
        target_rate = 48000 if codec == "libopus" else self.rate
        self.stream = container.add_stream(codec, rate=target_rate, layout=layout)
        context = self.stream.codec_context
        context.open()                      # fixes frame_size (FLAC 4608, Opus 960; PCM: any)
        self.resampler = av.AudioResampler(format=context.format.name, layout=layout,
                                           rate=target_rate,
                                           frame_size=context.frame_size or None)
        self.layout = layout
        self.container = container
        self.done = 0

    def write_until(self, seconds: float | None) -> None:
        end = self.samples.shape[1] if seconds is None else \
            min(self.samples.shape[1], int(round(seconds * self.rate)))
        if end > self.done:
            frame = self.av.AudioFrame.from_ndarray(self.samples[:, self.done:end], format="fltp",
                                                    layout=self.layout)
            frame.sample_rate = self.rate
            frame.pts = self.done
            frame.time_base = Fraction(1, self.rate)
            self._encode(self.resampler.resample(frame))
            self.done = end
        if seconds is None:
            self._encode(self.resampler.resample(None))
            self.container.mux(self.stream.encode(None))

    def _encode(self, frames: list) -> None:
        for frame in frames:                # the resampler's pts count samples at the codec rate
            self.container.mux(self.stream.encode(frame))


def write_exr(path: Path, pixels: np.ndarray) -> None:
    """pixels (H, W, 4) RGBA or (H, W) grey, float32 -> one OpenEXR file (zip compression)."""
    av = require_av("exr_sequence")
    grey = pixels.ndim == 2
    context = av.CodecContext.create("exr", "w")
    context.width, context.height = pixels.shape[1], pixels.shape[0]
    context.pix_fmt = "grayf32le" if grey else "gbrapf32le"
    context.time_base = Fraction(1, 1)
    context.options = {"compression": "zip16"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels, dtype=np.float32),
                                       format="grayf32le" if grey else "gbrapf32le")
    frame.pts = 0
    data = b"".join(bytes(packet) for packet in context.encode(frame) + context.encode(None))
    with open(path, "wb") as file:
        file.write(data)
