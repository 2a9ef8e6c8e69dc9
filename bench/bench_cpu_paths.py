"""A/B of the CPU paths inside one process: packed Swin MLP kernels on and off, and the
shifted-window seam masks against the full per-window mask. Configurations take turns on the
same loaded model, so other load hits both alike; prints the times of every run.

    python bench/bench_cpu_paths.py --variant swin_v1_t --dtype fp32 --runs 3
    python bench/bench_cpu_paths.py --variant swin_v1_l --dtype bf16 --runs 2 --switch seams
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import birefnet_core
from birefnet_core.network.backbones import swin
from tests.synthetic import synthetic_float_weights


def _switches(model) -> dict:
    """name -> (turn on, turn off) for each path that can be switched in place."""
    mlps = [m for m in model.modules() if isinstance(m, swin.Mlp)]
    packed = [m.packed for m in mlps]
    cached_layout = swin.window_layout

    def full_mask_layout(*args):
        layout = cached_layout(*args)
        return dataclasses.replace(layout, seam_windows=None, seam_mask=layout.mask)

    def set_layout(function):
        swin.window_layout = function
    return {
        "packed_mlp": (lambda: [setattr(m, "packed", p) for m, p in zip(mlps, packed)],
                       lambda: [setattr(m, "packed", None) for m in mlps]),
        "seams": (lambda: set_layout(cached_layout), lambda: set_layout(full_mask_layout)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="swin_v1_t")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--switch", choices=("packed_mlp", "seams"), default="packed_mlp")
    args = parser.parse_args(argv)
    model = birefnet_core.load_model(synthetic_float_weights(args.variant), dtype=args.dtype)
    x = torch.randn(1, 3, args.size, args.size).to(next(model.parameters()).dtype)
    turn_on, turn_off = _switches(model)[args.switch]
    times: dict[str, list[float]] = {"on": [], "off": []}
    with torch.inference_mode():
        model(x)                                                         # warm-up
        for _ in range(args.runs):
            for state, switch in (("on", turn_on), ("off", turn_off)):
                switch()
                start = time.perf_counter()
                model(x)
                times[state].append(round(time.perf_counter() - start, 2))
    turn_on()
    print(f"{args.variant} {args.dtype} {args.size}² {args.switch}: on {times['on']} s, "
          f"off {times['off']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
