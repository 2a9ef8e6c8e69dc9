"""Our Segment against ComfyUI's own Remove Background (0.21.0 and later), side by side.

One synthetic Swin-L file (official layout, integer buffers included) is given to both: core's
``comfy.bg_removal_model.load`` + ``encode_image`` (what Load Background Removal Model and Remove
Background run) and our ``BiRefNetLoader`` + ``BiRefNetSegment`` on the same
``background_removal/`` file, in the ComfyUI of ``$COMFYUI_DIR``, on the CPU, in float32 (core
runs with ``--fp32-text-enc``'s setting; it keeps these weights in float16 on the CPU
otherwise). Each configuration runs in a fresh child process (so each peak RSS is its own),
ours and core's alternating; the numbers are one timed run after loading. Also measured: how
far the two masks are apart at 1024² (no resizing on either side) and at 1500×1000 (each side
resizes its own way).

    COMFYUI_DIR=/path/to/ComfyUI-0.21.0 /path/to/its/python bench/bench_vs_core.py \
        [--batches 1 4] [--out bench/results/vs_core.json]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import peak_rss_mb, write_json  # noqa: E402

SIDES = ("ours", "core")


def _images(batch: int, height: int, width: int):
    """(B, H, W, 3) 8-bit-exact images as LoadImage gives them."""
    import numpy as np
    import torch

    from tests.test_comfyui_e2e import structured_image
    arrays = [np.asarray(structured_image(width, height, seed=30 + i)) for i in range(batch)]
    return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)


def _run_child(side: str, checkpoint: Path, batch: int, height: int, width: int,
               masks_out: Path) -> dict:
    """Load the model, run it once on the batch, save the masks; what it measured."""
    import numpy as np
    import torch

    from tests.comfyui_inprocess import import_pack
    pack = import_pack()
    import comfy.cli_args
    comfy.cli_args.args.fp32_text_enc = True        # core: float32 weights on the CPU
    images = _images(batch, height, width)
    start = time.perf_counter()
    cpu_start = time.process_time()
    if side == "core":
        from comfy.bg_removal_model import load
        model = load(str(checkpoint))
        loaded, cpu_loaded = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            masks = model.encode_image(images)
        masks = masks.reshape(batch, height, width)
    else:
        import folder_paths
        folder_paths.folder_names_and_paths["background_removal"] = (
            [str(checkpoint.parent)], {".safetensors"})
        patcher, info = pack.nodes.BiRefNetLoader().load(
            f"background_removal/{checkpoint.name}", "cpu", "fp32", "auto", "auto")
        print(info, file=sys.stderr)
        loaded, cpu_loaded = time.perf_counter(), time.process_time()
        masks, _, _ = pack.nodes.BiRefNetSegment().segment(patcher, images, 0, batch, 0.0, False,
                                                           "#FFFFFF")
    done, cpu_done = time.perf_counter(), time.process_time()
    np.save(masks_out, masks.float().cpu().numpy())
    # CPU seconds (all threads) as well as wall seconds: on a machine shared with other work
    # the wall time depends on the others' load, the CPU time much less.
    return {"side": side, "batch": batch, "height": height, "width": width,
            "load_s": loaded - start, "run_s": done - loaded,
            "s_per_image": (done - loaded) / batch, "cpu_s_per_image": (cpu_done - cpu_loaded) / batch,
            "load_cpu_s": cpu_loaded - cpu_start, "threads": torch.get_num_threads(),
            "peak_rss_mb": peak_rss_mb()}


def _spawn(args, side: str, checkpoint: Path, batch: int, height: int, width: int,
           work: Path) -> dict:
    masks = work / f"{side}_{batch}_{height}x{width}.npy"
    command = [args.python, __file__, "--child", side, "--checkpoint", str(checkpoint),
               "--batch", str(batch), "--height", str(height), "--width", str(width),
               "--masks", str(masks)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        return {"side": side, "batch": batch, "height": height, "width": width,
                "error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["masks"] = str(masks)
    print(f"{side:4s} batch {batch} {height}x{width}: {result['s_per_image']:.1f} s/image, "
          f"peak RSS {result['peak_rss_mb'] / 1024:.2f} GB", flush=True)
    return result


def _agreement(runs: list[dict], height: int, width: int) -> dict | None:
    import numpy as np
    pair = {r["side"]: r for r in runs if (r["height"], r["width"]) == (height, width)
            and r["batch"] == 1 and "masks" in r}
    if set(pair) != set(SIDES):
        return None
    ours, core = (np.load(pair[side]["masks"]) for side in SIDES)
    difference = np.abs(ours.astype(np.float64) - core)
    return {"size": f"{width}x{height}", "max_abs_255": float(difference.max() * 255),
            "mean_abs_255": float(difference.mean() * 255),
            "share_over_1_255": float((difference > 1 / 255).mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON") or sys.executable)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vs_core.json")
    parser.add_argument("--child", choices=SIDES)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--masks", type=Path)
    args = parser.parse_args(argv)
    if args.child:
        result = _run_child(args.child, args.checkpoint, args.batch, args.height, args.width,
                            args.masks)
        print(json.dumps(result))
        return 0
    from tests.comfyui_server import comfyui_source, write_full_checkpoint
    source = comfyui_source()
    if not (source / "comfy" / "bg_removal_model.py").is_file():
        print(f"{source} has no core background-removal support (ComfyUI 0.21.0 or later "
              "needed): set COMFYUI_DIR", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="birefnet-vs-core-"))
    checkpoint = write_full_checkpoint(work / "background_removal" / "synthetic.safetensors")
    # Ours and core's alternate; the 1500x1000 pair (both sides resize, their own ways) comes
    # before the larger batches, whose memory peak is the most likely to fail.
    plan = [(1, 1024, 1024), (1, 1000, 1500)] + [(b, 1024, 1024) for b in args.batches if b != 1]
    config = json.loads((source / "comfy" / "background_removal" / "birefnet.json").read_text())
    runs = []
    for batch, height, width in plan:
        for side in SIDES:
            runs.append(_spawn(args, side, checkpoint, batch, height, width, work))
            # Written after every run: a long benchmark stopped midway keeps what it measured.
            result = {"comfyui": str(source), "birefnet_json": config, "variant": "swin_v1_l",
                      "dtype": "float32", "device": "cpu", "cpu_count": os.cpu_count(),
                      "runs": [{k: v for k, v in r.items() if k != "masks"} for r in runs],
                      "agreement": [a for a in (_agreement(runs, 1024, 1024),
                                                _agreement(runs, 1000, 1500)) if a is not None]}
            write_json(args.out, result)
    for entry in result["agreement"]:
        print(f"masks at {entry['size']}: max {entry['max_abs_255']:.2f}/255 apart, mean "
              f"{entry['mean_abs_255']:.3f}/255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
