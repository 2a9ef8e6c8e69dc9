"""Bulk cut-outs: the plain CLI against ``birefnet_core.bulk`` with 1 and 2 actors, and the
CPU stages' cost per image (what sizes a GPU cluster's CPUs).

* throughput: the same --images JPEG photos (--photo-size, default 640x480) through Swin-T
  synthetic weights at --resolution (default 512), CPU only: ``python -m birefnet_core`` (one
  process), ``python -m birefnet_core.bulk --actors 1`` and ``--actors 2``, each in its own
  process, interleaved round by round (--rounds) so that other load hits all alike. Reported:
  wall time (start-up included), steady images/s (between the first and the last finished
  cut-out, from the files' modification times, the same for all three) and peak RSS of the CLI
  process and of each bulk actor (sampled with psutil every 0.2 s).
* stages: CPU time (this thread's, so other load inflates it little) and wall time per image of
  the CPU stages at 1024²: decoding a JPEG (quality 90) and a PNG, and writing the mask PNG and
  the RGBA cut-out PNG (save_outputs, PIL's default zlib level 6), and encoding both at zlib
  level 1 for comparison; the files' sizes; median over --stage-images photos.

    python bench/bench_bulk.py [--images 48] [--rounds 1] [--reverse 0|1] [--append]
        [--parts stages throughput] [--out bench/results/bulk.json]

Round i runs cli, bulk 1 actor, bulk 2 actors, in reverse order when i + --reverse is odd.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from bench.common import RESULTS, write_json  # noqa: E402
from birefnet_core.data.images import read_image, save_outputs  # noqa: E402
from tests.synthetic import synthetic_float_weights  # noqa: E402

ACTOR_TITLE = "MapBatches(MaskPredictor)"


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like picture: smooth gradients, a bright blob, texture and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.3 * np.sin(x / 17.0 + y / 23.0)], -1)
    cy, cx = height * rng.uniform(0.3, 0.7), width * rng.uniform(0.3, 0.7)
    blob = ((y - cy) / (0.3 * height)) ** 2 + ((x - cx) / (0.25 * width)) ** 2 < 1
    base[blob] = rng.uniform(0.4, 1.0, 3) + 0.1 * np.sin(x[blob] / 3.0)[:, None]
    noisy = base + rng.normal(0, 0.03, base.shape)
    return Image.fromarray((noisy.clip(0, 1) * 255).astype(np.uint8), "RGB")


def subject_mask(width: int, height: int, seed: int) -> Image.Image:
    """A mask like a real one: a subject of 0/255 with a soft edge a few pixels wide and a
    ragged (hair-like) outline."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = np.arctan2(y - height / 2, x - width / 2)
    ragged = 1 + 0.05 * np.sin(40 * angle + rng.uniform(0, 6)) + 0.02 * np.sin(173 * angle)
    radius = np.hypot((y - height / 2) / (0.35 * height), (x - width / 2) / (0.3 * width))
    alpha = np.clip((ragged - radius) * 60 + 0.5, 0, 1)             # ~6 px soft edge
    return Image.fromarray(np.round(alpha * 255).astype(np.uint8), "L")


class RssSampler(threading.Thread):
    """Peak RSS (MB) of each process of a tree whose command line names ``match`` (any if '')."""

    def __init__(self, root: int, match: str) -> None:
        super().__init__(daemon=True)
        self.root, self.match, self.peaks, self.running = root, match, {}, True
        self.titles: dict[int, str] = {}

    def run(self) -> None:
        while self.running:
            try:
                processes = [psutil.Process(self.root)]
                processes += processes[0].children(recursive=True)
            except psutil.Error:
                processes = []
            for process in processes:
                try:
                    title = " ".join(process.cmdline())
                    if self.match and self.match not in title:
                        continue
                    rss = process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.peaks[process.pid] = max(self.peaks.get(process.pid, 0.0), rss)
                self.titles[process.pid] = title[:80]
            time.sleep(0.2)


def run_config(name: str, command: list[str], out: Path, match: str,
               env: dict[str, str] | None = None) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    sampler = RssSampler(process.pid, match)
    sampler.start()
    _, errors = process.communicate()
    wall = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{errors[-3000:]}")
    times = sorted(p.stat().st_mtime for p in out.glob("*_cutout.png"))
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
    result = {"wall_s": round(wall, 2), "images": len(times),
              "images_per_s_wall": round(len(times) / wall, 4),
              "images_per_s_steady": round(steady, 4) if steady else None,
              "peak_rss_mb": sorted(round(v) for v in sampler.peaks.values()),
              "sampled": sorted(set(sampler.titles.values()))}
    print(f"{name}: {result}", flush=True)
    return result


def throughput(args, work: Path) -> dict:
    checkpoint = work / "swin_t.safetensors"
    save_file({k: v.contiguous() for k, v in synthetic_float_weights("swin_v1_t").items()},
              str(checkpoint))
    photos = work / "photos"
    photos.mkdir()
    width, height = args.photo_size
    for index in range(args.images):
        photo(width, height, index).save(photos / f"photo{index:03d}.jpg", quality=90)
    common = ["--model", str(checkpoint), "--resolution", str(args.resolution)]
    def cli(out: Path) -> tuple[list[str], str]:
        return [sys.executable, "-m", "birefnet_core", str(photos), "-o", str(out),
                "--device", "cpu", *common], ""

    configs = {
        "cli": cli,
        # One torch thread (OMP_NUM_THREADS=1): what the CLI gets when other processes load
        # the cores, where two threads wait on each other (measured 5-8x slower per forward).
        "cli_1_thread": cli,
        "bulk_1_actor_1_thread": lambda out: (
            [sys.executable, "-m", "birefnet_core.bulk", "--input", str(photos), "--output",
             str(out), "--actors", "1", "--threads-per-actor", "1", "--quiet", *common],
            ACTOR_TITLE),
        "bulk_1_actor": lambda out: ([sys.executable, "-m", "birefnet_core.bulk", "--input",
                                      str(photos), "--output", str(out), "--actors", "1",
                                      "--quiet", *common], ACTOR_TITLE),
        "bulk_2_actors": lambda out: ([sys.executable, "-m", "birefnet_core.bulk", "--input",
                                       str(photos), "--output", str(out), "--actors", "2",
                                       "--quiet", *common], ACTOR_TITLE),
    }
    configs = {name: build for name, build in configs.items() if name in args.configs}
    rounds: dict[str, list[dict]] = {name: [] for name in configs}
    for round_index in range(args.rounds):
        order = list(configs.items())
        for name, build in (order[::-1] if (round_index + args.reverse) % 2 else order):
            out = work / f"{name}_{round_index}"
            command, match = build(out)
            env = {"OMP_NUM_THREADS": "1"} if name == "cli_1_thread" else None
            rounds[name].append(run_config(name, command, out, match, env))
    return rounds


def stages(args) -> dict:
    """Per-image CPU and wall time of decoding and writing at 1024²."""
    timings: dict[str, list[tuple[float, float]]] = {
        "decode_jpeg": [], "decode_png": [], "write_mask_and_cutout_png": [],
        "encode_mask_and_cutout_png_level_1": []}
    sizes: dict[str, list[int]] = {"jpeg_in": [], "mask_png": [], "cutout_png": [],
                                   "mask_png_level_1": [], "cutout_png_level_1": []}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for index in range(args.stage_images):
            picture = photo(1024, 1024, 1000 + index)
            encoded = {}
            for kind, fmt, options in (("jpeg", "JPEG", {"quality": 90}), ("png", "PNG", {})):
                stream = io.BytesIO()
                picture.save(stream, fmt, **options)
                encoded[kind] = stream.getvalue()
            for kind, data in encoded.items():
                cpu, wall = time.thread_time(), time.perf_counter()
                rgb = read_image(io.BytesIO(data))
                timings[f"decode_{kind}"].append((time.thread_time() - cpu,
                                                  time.perf_counter() - wall))
            mask = subject_mask(1024, 1024, index)
            cpu, wall = time.thread_time(), time.perf_counter()
            save_outputs(rgb, mask, out, f"p{index}")
            timings["write_mask_and_cutout_png"].append((time.thread_time() - cpu,
                                                         time.perf_counter() - wall))
            sizes["jpeg_in"].append(len(encoded["jpeg"]))
            sizes["mask_png"].append((out / f"p{index}_mask.png").stat().st_size)
            sizes["cutout_png"].append((out / f"p{index}_cutout.png").stat().st_size)
            cutout = rgb.convert("RGBA")                   # what a faster zlib level would give
            cutout.putalpha(mask)
            cpu, wall = time.thread_time(), time.perf_counter()
            for kind, picture_out in (("mask", mask), ("cutout", cutout)):
                stream = io.BytesIO()
                picture_out.save(stream, "PNG", compress_level=1)
                sizes[f"{kind}_png_level_1"].append(len(stream.getvalue()))
            timings["encode_mask_and_cutout_png_level_1"].append((time.thread_time() - cpu,
                                                                  time.perf_counter() - wall))
    result = {name: {"cpu_ms": round(1000 * statistics.median(c for c, _ in values), 1),
                     "wall_ms": round(1000 * statistics.median(w for _, w in values), 1)}
              for name, values in timings.items()}
    result["bytes_per_image"] = {name: int(statistics.median(values))
                                 for name, values in sizes.items()}
    print(f"stages at 1024²: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--photo-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stage-images", type=int, default=8)
    parser.add_argument("--reverse", type=int, default=0, choices=(0, 1),
                        help="1: the first round runs the configurations in reverse order")
    parser.add_argument("--configs", nargs="+", metavar="NAME",
                        default=["cli", "bulk_1_actor", "bulk_2_actors"],
                        help="of cli, cli_1_thread, bulk_1_actor, bulk_1_actor_1_thread, "
                             "bulk_2_actors")
    parser.add_argument("--append", action="store_true",
                        help="add this run's rounds to those already in --out")
    parser.add_argument("--parts", nargs="+", default=["stages", "throughput"],
                        choices=["stages", "throughput"])
    parser.add_argument("--out", type=Path, default=RESULTS / "bulk.json")
    args = parser.parse_args()
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()},
              "settings": {"images": args.images, "photo_size": args.photo_size,
                           "resolution": args.resolution, "variant": "swin_v1_t (synthetic)",
                           "rounds": args.rounds}}
    if "stages" in args.parts:
        result["stages_1024"] = stages(args)
    if "throughput" in args.parts:
        with tempfile.TemporaryDirectory() as work:
            result["throughput"] = throughput(args, Path(work))
    result["machine"]["load_average_at_end"] = os.getloadavg()
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for part in {"stages_1024", "throughput"} - set(result):      # parts not re-run this time
        if part in earlier:
            result[part] = earlier[part]
    if args.append and "throughput" in args.parts and "throughput" in earlier:
        result["throughput"] = {**earlier["throughput"],
                                **{name: earlier["throughput"].get(name, []) + rounds
                                   for name, rounds in result["throughput"].items()}}
    if args.append:
        result["machine"]["earlier_runs"] = earlier.get("machine")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
