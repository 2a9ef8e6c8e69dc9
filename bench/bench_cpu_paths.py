"""A/B of the CPU paths inside one process: packed oneDNN kernels, Swin blocks in chunks of
rows, bfloat16 window attention as separate products. Configurations take turns on the same
loaded model, so other load hits both alike; prints the times of every run. ``--kernels``
instead times F.linear against the packed kernel at BiRefNet's linear shapes.

    python bench/bench_cpu_paths.py --variant swin_v1_t --dtype fp32 --runs 3 --switch packed
    python bench/bench_cpu_paths.py --variant swin_v1_l --dtype bf16 --runs 2 --switch attention
    python bench/bench_cpu_paths.py --kernels --dtype bf16
    python bench/bench_cpu_paths.py --variant swin_v1_t --runs 3 --chunk-rows 2048 4096 8192 16384

    python bench/bench_cpu_paths.py --variant swin_v1_t --runs 3 --dtypes fp32 bf16 int8 --cpu-time

``--chunk-rows`` sweeps Swin's CPU row chunk (0: no chunks), ``--dtypes`` the dtypes, each
configuration in turn; it prints the median of each, the row chunk ``cpu_features`` derives
for this CPU and its bfloat16 probe, and writes them to bench/results/cpu_chunk_rows.json or
cpu_dtypes.json. ``--cpu-time`` runs one torch thread timed by its CPU clock, so that other
processes on a shared machine do not count.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import birefnet_core
from bench.common import RESULTS, write_json
from birefnet_core.network import cpu_features, cpu_kernels
from birefnet_core.network.backbones import swin
from tests.synthetic import synthetic_float_weights

# (rows, in, out, activation): Swin-T at 1024² (a 4096-row chunk and whole stages), Swin-L,
# the deformable 7x7 branch's kernel and its projection.
KERNEL_SHAPES = ((65536, 96, 288, None), (4067, 96, 288, None), (4067, 96, 384, "gelu"),
                 (16384, 192, 576, None), (16384, 384, 192, None), (4096, 1536, 384, None),
                 (4032, 192, 576, None), (4096, 768, 2304, None), (334, 3136, 256, "relu"),
                 (334, 256, 64, None))


def _switches(model) -> dict:
    """name -> (turn on, turn off) for each path that can be switched in place."""
    packed = [m for m in model.modules() if hasattr(m, "pack_cpu_kernels")]
    kernels = [m.packed for m in packed]
    fused_attention = swin.window_attention

    def sdpa(q, k, v, bias):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def set_attention(function):
        swin.window_attention = function

    def set_chunk_rows(rows):
        swin.CPU_CHUNK_ROWS = rows
    return {
        "packed": (lambda: [setattr(m, "packed", p) for m, p in zip(packed, kernels)],
                   lambda: [setattr(m, "packed", None) for m in packed]),
        "chunks": (lambda: set_chunk_rows(None), lambda: set_chunk_rows(0)),
        "attention": (lambda: set_attention(fused_attention), lambda: set_attention(sdpa)),
    }


def time_kernels(dtype: torch.dtype, repeats: int = 5) -> None:
    """GFLOP/s of F.linear (+ activation) and of the packed kernel, best of ``repeats``."""
    def best(function) -> float:
        function()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return min(times)
    for rows, k, n, activation in KERNEL_SHAPES:
        x, layer = torch.randn(rows, k, dtype=dtype), torch.nn.Linear(k, n).to(dtype)
        packed = cpu_kernels.PackedLinear(layer.weight, layer.bias, (layer.weight,))
        act = cpu_kernels.ACTIVATIONS[activation]
        gflop = 2 * rows * k * n / 1e9
        with torch.inference_mode():
            plain = gflop / best(lambda: act(layer(x)))
            fast = gflop / best(lambda: packed(x, activation))
        print(f"{rows}x{k}->{n} {activation or ''}: F.linear {plain:.0f}, packed {fast:.0f} "
              f"GFLOP/s")


def take_turns(configs: dict, runs: int, clock) -> dict:
    """label -> {median_s, runs_s}: ``configs`` maps a label to (set up, model, input); one
    warm-up round, then ``runs`` rounds in which every configuration runs once, in turn."""
    times: dict[str, list[float]] = {label: [] for label in configs}
    with torch.inference_mode():
        for round_ in range(runs + 1):
            for label, (setup, model, x) in configs.items():
                setup()
                start = clock()
                model(x)
                if round_:
                    times[label].append(round(clock() - start, 3))
    return {label: {"median_s": statistics.median(t), "runs_s": t} for label, t in times.items()}


def _set_chunk_rows(rows: int | None) -> None:
    swin.CPU_CHUNK_ROWS = rows


def sweep(args) -> dict:
    """The ``--chunk-rows`` or ``--dtypes`` sweep: configurations taking turns."""
    x = torch.randn(1, 3, args.size, args.size)
    if args.chunk_rows:
        model = birefnet_core.load_model(synthetic_float_weights(args.variant), dtype=args.dtype)
        x = x.to(next(model.parameters()).dtype)
        configs = {f"{rows} rows": (lambda rows=rows: _set_chunk_rows(rows), model, x)
                   for rows in args.chunk_rows}
    else:
        configs = {}
        for dtype in args.dtypes:
            model = birefnet_core.load_model(synthetic_float_weights(args.variant), dtype=dtype)
            configs[dtype] = (lambda: _set_chunk_rows(None), model,
                              x.to(next(model.parameters()).dtype))
    clock = time.thread_time if args.cpu_time else time.perf_counter
    found = take_turns(configs, args.runs, clock)
    _set_chunk_rows(None)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="swin_v1_t")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--switch", choices=("packed", "chunks", "attention"), default="packed")
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=None, metavar="ROWS",
                        help="sweep Swin's CPU row chunk over these sizes (0: no chunks)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=("fp32", "bf16", "int8"),
                        help="time these dtypes in turns (the row chunk this CPU derives)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one torch thread, timed by its CPU clock: other processes' load "
                             "does not count (for a shared machine)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for a sweep")
    parser.add_argument("--kernels", action="store_true",
                        help="time F.linear against the packed kernel at BiRefNet's shapes")
    args = parser.parse_args(argv)
    if args.kernels:
        time_kernels(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
        return 0
    if args.cpu_time:
        torch.set_num_threads(1)
    if args.chunk_rows or args.dtypes:
        found = sweep(args)
        for label, row in found.items():
            print(f"{args.variant} {args.size}² {label}: median {row['median_s']:.2f} s "
                  f"{row['runs_s']}", flush=True)
        derived = cpu_features.swin_chunk_rows()
        print(f"derived row chunk for this CPU: {derived} rows ({cpu_features.describe_caches()}, "
              f"{torch.get_num_threads()} threads); {cpu_features.cpu_bf16().evidence}")
        name = "cpu_chunk_rows" if args.chunk_rows else "cpu_dtypes"
        write_json(args.out or RESULTS / f"{name}.json", {
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "clock": "thread CPU time" if args.cpu_time else "wall",
            "l2_bytes": cpu_features.cache_sizes().l2_bytes, "derived_rows": derived,
            "bf16_probe": cpu_features.cpu_bf16().evidence, "variant": args.variant,
            "size": args.size, "command": " ".join(["python"] + sys.argv), "results": found})
        return 0
    model = birefnet_core.load_model(synthetic_float_weights(args.variant), dtype=args.dtype)
    x = torch.randn(1, 3, args.size, args.size).to(next(model.parameters()).dtype)
    turn_on, turn_off = _switches(model)[args.switch]
    times: dict[str, list[float]] = {"on": [], "off": []}
    with torch.inference_mode():
        for switch in (turn_off, turn_on):                               # warm-up, both
            switch()
            model(x)
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
