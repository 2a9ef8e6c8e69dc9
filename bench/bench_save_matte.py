"""Memory and speed of write_matte (what BiRefNet Save Matte runs) for every format.

Each format runs in a fresh process: the clip (frames float32 (T, H, W, 3) and masks (T, H, W),
as ComfyUI holds them) is filled in place and the resident memory read; the clip is written frame
by frame as the node hands it over, and the peak RSS is read. ``extra`` is that peak less the
memory once the clip was filled (everything writing added, PyAV's libraries excepted: they load
before), also in frames (one float32 RGBA frame). Run at two lengths: an extra that does not grow
with the clip means no second copy.

    .venv/bin/python bench/bench_save_matte.py --frames 8 24 --size 1920x1080

300 frames of 1080p (a 10 GB clip) is the issue's case; the numbers here use fewer frames where
the machine is shared (the extra does not depend on the length: see both lengths).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run as a script, as bench/ does

from bench.common import RESULTS, ROOT, peak_rss_mb, write_json  # noqa: E402

FORMATS = ("prores_4444", "webm_vp9_alpha", "ffv1_lossless", "png_sequence_16bit",
           "png_sequence_8bit", "exr_sequence", "matte_only")


def fill_clip(count: int, height: int, width: int):
    """A moving gradient with grain and a soft-edged matte, allocated once and filled in place."""
    import torch
    frames = torch.empty(count, height, width, 3)
    masks = torch.empty(count, height, width)
    xx = torch.linspace(0, 1, width)[None, :].expand(height, width)
    yy = torch.linspace(0, 1, height)[:, None].expand(height, width)
    generator = torch.Generator().manual_seed(0)
    for t in range(count):
        shift = t / max(1, count)
        frames[t, ..., 0] = (xx + shift) % 1
        frames[t, ..., 1] = yy
        frames[t, ..., 2] = 0.5
        frames[t] += 0.02 * torch.rand(height, width, 3, generator=generator)
        masks[t] = ((0.35 - ((xx - 0.3 - 0.4 * shift) ** 2 + (yy - 0.5) ** 2).sqrt()) * 20
                    ).clamp(0, 1)
    return frames.clamp_(0, 1), masks


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc; the benchmark runs where the tests run)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_one(format: str, count: int, height: int, width: int) -> dict:
    """In this process: the clip, then write_matte on it; numbers as a dict."""
    from birefnet_core.data import write_matte
    try:
        import av  # noqa: F401  (its libraries are loaded before the baseline: a fixed cost)
    except ImportError:
        pass
    frames, masks = fill_clip(count, height, width)
    before = current_rss_mb()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        written = write_matte(Path(folder) / "clip",
                              (frames[i:i + 1] for i in range(count)),   # as the node hands over
                              masks, format=format, fps=24.0, premultiply=False)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in written.files)
    after = peak_rss_mb()
    frame_mb = height * width * 4 * 4 / 2**20
    return {"format": format, "frames": count, "size": f"{width}x{height}",
            "clip_mb": round(count * height * width * 4 * 4 / 2**20, 1),
            "rss_before_mb": round(before, 1), "peak_after_mb": round(after, 1),
            "extra_mb": round(after - before, 1),
            "extra_frames": round((after - before) / frame_mb, 2),
            "s_per_frame": round(seconds / count, 4), "file_mb": round(size / 2**20, 2)}


def run_child(format: str, count: int, height: int, width: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", format,
               "--frames", str(count), "--size", f"{width}x{height}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def video_matte_seconds_per_frame() -> float | None:
    try:
        throughput = json.loads((RESULTS / "video.json").read_text())["throughput"][0]
        return round(1 / throughput["video_matte_node_auto_stabilize0.5_fps"], 3)
    except (OSError, KeyError, IndexError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 24])
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--child", choices=FORMATS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.child:
        print(json.dumps(measure_one(args.child, args.frames[0], height, width)))
        return
    rows = []
    for count in args.frames:
        for format in args.formats:
            row = run_child(format, count, height, width)
            rows.append(row)
            print(f"{format:20s} {count:4d} frames {row['size']}: {row['s_per_frame']:.3f} s/frame, "
                  f"peak +{row['extra_mb']:.0f} MB over the {row['clip_mb']:.0f} MB clip "
                  f"({row['extra_frames']:.2f} frames), {row['file_mb']:.1f} MB written",
                  flush=True)
    import torch
    result = {"threads": torch.get_num_threads(), "rows": rows,
              "video_matte_s_per_frame_512px_swin_t": video_matte_seconds_per_frame(),
              "command": "python bench/bench_save_matte.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / "save_matte.json", result)


if __name__ == "__main__":
    main()
