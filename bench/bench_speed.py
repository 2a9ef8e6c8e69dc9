"""Time BiRefNet's forward pass and ``predict`` on this machine; write the numbers to JSON.

The quick one. The README's speed table (floor, official code side by side, compile, int8)
comes from bench/bench_official.py.

Each configuration runs in its own process so that its peak resident memory is its own.
Weights are synthetic (built from the parity manifests): speed does not depend on their values.

    python bench/bench_speed.py                       # Swin-T and Swin-L, fp32 and bf16, 1024^2
    python bench/bench_speed.py --variants swin_v1_t --dtypes fp32 --runs 3 --out bench/results/x.json
    python bench/bench_speed.py --deform torchvision  # the same model with torchvision's kernel
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:          # Windows: no getrusage
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _use_torchvision_deform_conv() -> None:
    """Swap the plain-PyTorch kernel for torchvision's compiled one (the baseline)."""
    from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

    import birefnet_core.network.deform_conv as deform_conv

    def forward(self, x, epilogue=None):
        offset, modulator = self._offsets(x)
        out = torchvision_deform_conv2d(x, offset, self.regular_conv.weight,
                                        self.regular_conv.bias, stride=self.stride,
                                        padding=self.padding, mask=modulator)
        if epilogue is None:
            return out
        batch, _, height, width = out.shape
        rows = epilogue(out.permute(0, 2, 3, 1).reshape(batch * height * width, -1))
        return rows.view(batch, height, width, -1).permute(0, 3, 1, 2)
    deform_conv.DeformableConv2d.forward = forward


def measure(variant: str, dtype: str, size: int, runs: int, deform: str) -> dict:
    """One configuration, in this process: median wall time of warm runs and peak RSS."""
    import torch

    sys.path.insert(0, str(ROOT))
    import birefnet_core
    from tests.synthetic import synthetic_float_weights

    if deform == "torchvision":
        _use_torchvision_deform_conv()
    model = birefnet_core.load_model(synthetic_float_weights(variant), dtype=dtype,
                                     resolution=size, patch_order="current")
    torch_dtype = next(model.parameters()).dtype
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    image = torch.rand(1, 3, size * 3 // 4, size, generator=torch.Generator().manual_seed(1))
    forward_times, predict_times = [], []
    with torch.inference_mode():
        model(x.to(torch_dtype))                                # warm-up
        for _ in range(runs):
            start = time.perf_counter()
            model(x.to(torch_dtype))
            forward_times.append(time.perf_counter() - start)
    for _ in range(runs):
        start = time.perf_counter()
        birefnet_core.predict(model, image)
        predict_times.append(time.perf_counter() - start)
    return {"variant": variant, "dtype": dtype, "size": size, "deform_conv": deform,
            "runs": runs, "forward_s": statistics.median(forward_times),
            "forward_all_s": forward_times, "predict_s": statistics.median(predict_times),
            "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["swin_v1_t", "swin_v1_l"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deform", choices=["ours", "torchvision"], default="ours")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.json")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:   # child process: one configuration, JSON on stdout
        print(json.dumps(measure(args.variants[0], args.dtypes[0], args.size, args.runs,
                                 args.deform)))
        return 0
    results = []
    for variant in args.variants:
        for dtype in args.dtypes:
            command = [sys.executable, __file__, "--one", "--variants", variant, "--dtypes", dtype,
                       "--size", str(args.size), "--runs", str(args.runs), "--deform", args.deform]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(row)
            print(f"{variant:10s} {dtype:5s} {args.size}^2 deform={args.deform:11s} "
                  f"forward {row['forward_s']:7.2f} s  predict {row['predict_s']:7.2f} s  "
                  f"peak RSS {row['peak_rss_mb'] or float('nan'):7.0f} MB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                    "command": " ".join([Path(sys.executable).name] + sys.argv),
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
