"""The Segment node's cost over a direct ``birefnet_core.predict`` call, inside a real ComfyUI.

Loads a synthetic Swin-T checkpoint through BiRefNetLoader (ComfyUI imported in this process,
as tests/comfyui_inprocess.py does), then times BiRefNetSegment and ``predict`` on the same
image, alternating, median of the runs. Writes the numbers to JSON.

    python bench/bench_node_overhead.py [--size 1024] [--runs 3] [--out bench/results/node_overhead.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from bench.common import write_json  # noqa: E402
from tests.comfyui_inprocess import import_pack  # noqa: E402
from tests.synthetic import synthetic_float_weights  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="swin_v1_t")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "node_overhead.json")
    args = parser.parse_args(argv)
    pack = import_pack()
    import folder_paths
    folder = Path(tempfile.mkdtemp(prefix="birefnet-bench-"))
    save_file({k: v.contiguous() for k, v in synthetic_float_weights(args.variant).items()},
              folder / "bench.safetensors")
    folder_paths.folder_names_and_paths["birefnet"] = ([str(folder)], {".safetensors"})
    patcher, info = pack.nodes.BiRefNetLoader().load("bench.safetensors", "cpu", "fp32",
                                                     "current", "imagenet")
    image = torch.rand(1, args.size * 3 // 4, args.size, 3, generator=torch.Generator().manual_seed(0))
    segment = pack.nodes.BiRefNetSegment()

    def run_node():
        segment.segment(patcher, image, args.size, 1, 0.0, False, "#FFFFFF")

    def run_predict():
        pack.birefnet_core.predict(patcher.model, image.permute(0, 3, 1, 2), args.size)

    run_node()                                            # warm-up, and loads the model
    node_times, predict_times = [], []
    for _ in range(args.runs):
        for fn, times in ((run_node, node_times), (run_predict, predict_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    node, direct = statistics.median(node_times), statistics.median(predict_times)
    result = {"variant": args.variant, "size": args.size, "runs": args.runs, "info": info,
              "segment_node_s": node, "predict_s": direct, "overhead_pct": 100 * (node / direct - 1),
              "segment_node_all_s": node_times, "predict_all_s": predict_times}
    print(f"Segment node {node:.2f} s, predict {direct:.2f} s: overhead "
          f"{result['overhead_pct']:+.1f}% ({args.variant}, {args.size}^2, median of {args.runs})")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
