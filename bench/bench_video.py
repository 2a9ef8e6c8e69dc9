"""Video matting: throughput, memory over clip length, and flicker/lag of the stabiliser.

* throughput: frames/s (best of --repeats interleaved runs) of BiRefNetVideoMatte (inside ComfyUI imported in this process, as
  tests/comfyui_inprocess.py does) against a per-frame loop of BiRefNetSegment, same synthetic
  checkpoint, same frames; plus birefnet_core.matte_video at batch sizes 1 and 4.
* memory: peak RSS of ``matte_video`` over 30 and 300 frames made one at a time by a reader
  object (as a video decoder would), each in its own process; the masks it returns are reported separately (the output is the only thing
  allowed to grow with the clip).
* flicker: on bench/video_clips.py's synthetic clips (static scene + a square moving 4 px per
  frame, per-frame noise), mean |mask change| in static regions and edge lag, stabilisation off
  vs each method and strength, for a stand-in predictor with per-frame logit noise (ground
  truth known), and the same flicker for the real network with synthetic weights (its masks
  mean nothing, but their frame-to-frame noise is the network's response to sensor noise).

    python bench/bench_video.py [--parts throughput memory flicker] [--out bench/results/video.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import write_json  # noqa: E402
from bench.video_clips import edge_lag, make_clip, simulated_masks, static_flicker  # noqa: E402
from tests.synthetic import synthetic_float_weights  # noqa: E402


def _frames(count: int, size: int) -> torch.Tensor:
    """(T, H, W, 3) IMAGE frames: a drifting gradient with noise."""
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, size)
    base = torch.stack([ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size),
                        0.5 * torch.ones(size, size)], dim=-1)
    return torch.stack([(base.roll(2 * t, dims=1) + 0.03 * torch.randn(base.shape, generator=generator)
                         ).clamp(0, 1) for t in range(count)])


def throughput(variant: str, sizes: list[int], frames: int, repeats: int) -> list[dict]:
    from safetensors.torch import save_file

    from tests.comfyui_inprocess import import_pack
    pack = import_pack()
    import folder_paths
    folder = Path(tempfile.mkdtemp(prefix="birefnet-bench-"))
    save_file({k: v.contiguous() for k, v in synthetic_float_weights(variant).items()},
              folder / "bench.safetensors")
    folder_paths.folder_names_and_paths["birefnet"] = ([str(folder)], {".safetensors"})
    patcher, _ = pack.nodes.BiRefNetLoader().load("bench.safetensors", "cpu", "fp32", "current",
                                                  "imagenet")
    segment, video = pack.nodes.BiRefNetSegment(), pack.nodes.BiRefNetVideoMatte()
    results = []
    for size in sizes:
        clip = _frames(frames, size)
        segment.segment(patcher, clip[:1], size, 1, 0.0, False, "#FFFFFF")        # warm-up
        runs = {
            "segment_node_per_frame": lambda: [segment.segment(patcher, clip[t:t + 1], size, 1,
                                                               0.0, False, "#FFFFFF")
                                               for t in range(frames)],
            "video_matte_node_auto_stabilize0.5": lambda: video.matte(
                patcher, clip, size, 0, 0.5, "median", False, "#00FF00"),
            "video_matte_node_batch4_stabilize0.5": lambda: video.matte(
                patcher, clip, size, 4, 0.5, "median", False, "#00FF00"),
            "matte_video_batch1": lambda: pack.birefnet_core.matte_video(
                patcher.model, clip.permute(0, 3, 1, 2), batch_size=1, resolution=size),
            "matte_video_batch4": lambda: pack.birefnet_core.matte_video(
                patcher.model, clip.permute(0, 3, 1, 2), batch_size=4, resolution=size),
        }
        row = {"variant": variant, "size": size, "frames": frames, "repeats": repeats}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):                  # interleaved, so drift hits all alike
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        for name in runs:
            row[f"{name}_fps"] = frames / min(times[name])
            print(f"{size}^2 {name}: {row[f'{name}_fps']:.3f} frames/s (best of {repeats})",
                  flush=True)
        results.append(row)
    return results


def memory_child(variant: str, size: int, frames: int) -> dict:
    """Run in its own process: stream ``frames`` generated frames through matte_video."""
    import birefnet_core
    model = birefnet_core.load_model(synthetic_float_weights(variant), resolution=size)
    generator = torch.Generator().manual_seed(0)

    class Reader:
        """Frames made one at a time, as a video reader decodes them (it knows its length)."""

        def __len__(self) -> int:
            return frames

        def __iter__(self):
            for _ in range(frames):
                yield torch.rand(3, size, size, generator=generator)

    start = time.perf_counter()
    masks = birefnet_core.matte_video(model, Reader(), batch_size=4, stabilize=0.5)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024               # MiB (Linux)
    output = masks.numel() * masks.element_size() / 2 ** 20
    return {"frames": frames, "size": size, "variant": variant, "peak_rss_mib": peak,
            "output_masks_mib": output, "peak_minus_output_mib": peak - output,
            "seconds": seconds}


def memory(variant: str, size: int, counts: list[int]) -> list[dict]:
    rows = []
    for count in counts:
        out = subprocess.run([sys.executable, __file__, "--memory-child", variant, str(size),
                              str(count)], check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{count} frames at {size}^2: peak RSS {row['peak_rss_mib']:.0f} MiB, masks "
              f"{row['output_masks_mib']:.0f} MiB, rest {row['peak_minus_output_mib']:.0f} MiB",
              flush=True)
        rows.append(row)
    return rows


def flicker(network_variant: str) -> dict:
    import birefnet_core
    from birefnet_core.inference.temporal import STABILIZE_METHODS, TemporalStabilizer
    result: dict = {"simulated": [], "network": []}
    for noise in (0.01, 0.03, 0.06):
        clip = make_clip(noise=noise)
        masks = simulated_masks(clip)
        base, base_lag = static_flicker(masks, clip), edge_lag(masks, clip)
        for method in STABILIZE_METHODS:
            for strength in (0.25, 0.5, 1.0):
                stabilizer, out = TemporalStabilizer(strength, method), []
                for frame, mask in zip(clip.frames, masks):
                    out += [m for _, m in stabilizer.push(frame, mask)]
                out += [m for _, m in stabilizer.flush()]
                stable = torch.stack(out)
                lag = edge_lag(stable, clip)
                row = {"noise": noise, "method": method, "strength": strength,
                       "flicker_off": base, "flicker_on": static_flicker(stable, clip),
                       "lag_added_px": {k: lag[k] - base_lag[k] for k in lag}}
                row["flicker_ratio"] = row["flicker_on"] / base
                print(f"simulated noise {noise} {method} {strength}: flicker x"
                      f"{row['flicker_ratio']:.3f}, lag added {row['lag_added_px']}", flush=True)
                result["simulated"].append(row)
    model = birefnet_core.load_model(synthetic_float_weights(network_variant), resolution=256)
    clip = make_clip(noise=0.03)
    off = birefnet_core.matte_video(model, clip.frames, batch_size=4)
    for method in STABILIZE_METHODS:
        on = birefnet_core.matte_video(model, clip.frames, batch_size=4, stabilize=0.5,
                                       method=method)
        row = {"variant": network_variant, "method": method, "strength": 0.5,
               "flicker_off": static_flicker(off, clip), "flicker_on": static_flicker(on, clip)}
        row["flicker_ratio"] = row["flicker_on"] / row["flicker_off"]
        print(f"network {network_variant} {method} 0.5: flicker x{row['flicker_ratio']:.3f}")
        result["network"].append(row)
    return result


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        print(json.dumps(memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["throughput", "memory", "flicker"])
    parser.add_argument("--variant", default="swin_v1_t")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-variant", default="pvt_v2_b0")
    parser.add_argument("--memory-size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "video.json")
    args = parser.parse_args(argv)
    # parts run separately land in the same file
    results: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["threads"] = torch.get_num_threads()
    if "flicker" in args.parts:
        results["flicker"] = flicker(args.memory_variant)
    if "memory" in args.parts:
        results["memory"] = memory(args.memory_variant, args.memory_size, [30, 300])
    if "throughput" in args.parts:
        results["throughput"] = throughput(args.variant, args.sizes, args.frames, args.repeats)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
