"""The official BiRefNet code and ours, timed side by side in one run on the same synthetic weights.

Give the path of an official checkout (git clone https://github.com/ZhengPeng7/BiRefNet; never
committed here; its own needs are in requirements-bench.txt). For each variant, one worker
process per configuration (``--configs``: official float32, ours float32, official bfloat16 if
its code can run it, ours bfloat16; on request ours compiled in either dtype and ours with int8
linear layers) builds its model from the same synthetic state dict, is warmed up (the first
call, which compiles a compiled model, is timed), and then the workers take turns so that
whatever else the machine does hits all alike. A compiled worker also times its first call at
a second size (the recompile a new working resolution costs). Each figure is the median of ``--runs`` timed forward passes; each worker's
peak RSS is its own. The official bfloat16 run uses ``torch.autocast`` when the model cannot be
cast (torchvision's deformable convolution has no bfloat16 CPU kernel); if neither works, the
error is recorded.

The floor: the forward's multiply-accumulate FLOPs (counted with torch.utils.flop_counter after
the warm-up, deformable convolutions included; per variant the fewest any implementation ran)
divided by this CPU's matrix-multiply rate (square torch.matmul of 1024, 2048 and 4096 in that
dtype, same threads, the best of all, measured before and after; int8 rows use the float32
rate, the dtype of most of their FLOPs). ``x floor`` says how many times slower than that a
figure is.

    python bench/bench_official.py --official /tmp/official-birefnet
    python bench/bench_official.py --official ... --variants swin_v1_t --runs 1 --table
    python bench/bench_official.py --official ... --configs official:fp32 ours:fp32 ours:bf16 \
        ours+compile:fp32 ours+compile:bf16 ours:int8 --table
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (RESULTS, official_birefnet_class, peak_rss_mb,  # noqa: E402
                          write_json)

CONFIGS = (("official", "fp32"), ("ours", "fp32"), ("official", "bf16"), ("ours", "bf16"),
           ("ours+compile", "fp32"), ("ours+compile", "bf16"), ("ours", "int8"))
DEFAULT_CONFIGS = ("official:fp32", "ours:fp32", "official:bf16", "ours:bf16")
# int8 runs most FLOPs (the convolutions) in float32: its floor uses the float32 rate.
RATE_OF = {"fp32": "fp32", "bf16": "bf16", "int8": "fp32"}


# ----------------------------------------------------------------------------- worker side

def _flop_formulas() -> dict:
    """Formulas the counter lacks: torchvision's deformable convolution, CPU fused attention,
    the packed and int8 linear kernels."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    def deform_conv(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        batch, out_channels, out_h, out_w = out_shape
        return 2 * batch * out_h * out_w * out_channels * weight_shape[1] * weight_shape[2] \
            * weight_shape[3]

    def cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def linear(input_shape, *args, out_shape=None, **kwargs) -> int:
        """oneDNN's packed linear and the dynamic int8 linear: (..., K) -> (..., N)."""
        rows = 1
        for size in input_shape[:-1]:
            rows *= size
        return 2 * rows * input_shape[-1] * out_shape[-1]

    formulas = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention,
                torch.ops.mkldnn._linear_pointwise: linear}
    if hasattr(torch.ops.quantized, "linear_dynamic"):
        formulas[torch.ops.quantized.linear_dynamic] = linear
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "deform_conv2d"):
        formulas[torch.ops.torchvision.deform_conv2d] = deform_conv
    return formulas


def _official_model(checkout: Path, variant: str):
    """The official BiRefNet built by its own code for ``variant``, synthetic weights."""
    import torch

    from tests.synthetic import synthetic_state_dict
    model = official_birefnet_class(checkout, variant)(bb_pretrained=False).eval()
    model.load_state_dict(synthetic_state_dict(variant, model.state_dict()), strict=True)
    return model.requires_grad_(False), torch.float32


def _build(side: str, dtype: str, variant: str, size: int, checkout: Path):
    """(forward callable, input) for one configuration; raises if it cannot run."""
    import torch
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    if side.startswith("ours"):
        import birefnet_core
        from tests.synthetic import synthetic_float_weights
        model = birefnet_core.load_model(synthetic_float_weights(variant), dtype=dtype,
                                         resolution=size, patch_order="current",
                                         compile=side == "ours+compile")
        x = x.to(next(model.parameters()).dtype)

        def forward(image=x):
            return model(image)
        forward.model = model
        return forward, "cast"
    model, _ = _official_model(checkout, variant)
    if dtype == "fp32":
        return (lambda: model(x)[-1]), "cast"
    try:                                                   # cast the model, as ours does
        model_bf16 = model.to(torch.bfloat16)
        with torch.inference_mode():
            model_bf16(torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16))
        x_bf16 = x.to(torch.bfloat16)
        return (lambda: model_bf16(x_bf16)[-1]), "cast"
    except Exception:                                       # noqa: BLE001 - try autocast next
        model = model.float()

    def autocast_forward(image=x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(image)[-1]
    with torch.inference_mode():                           # a small probe: fail fast
        autocast_forward(torch.zeros(1, 3, 64, 64))
    return autocast_forward, "autocast"


def worker(side: str, dtype: str, variant: str, size: int, checkout: Path, dump: Path,
           threads: int | None) -> None:
    """Build, warm up (counting FLOPs), then one timed forward per 'run' line on stdin."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if threads:
        torch.set_num_threads(threads)

    try:
        forward, mode = _build(side, dtype, variant, size, checkout)
        start = time.perf_counter()
        with torch.inference_mode():
            out = forward()                                 # compiles, for a compiled model
        first_call_s = time.perf_counter() - start
        counter = FlopCounterMode(display=False, custom_mapping=_flop_formulas())
        with torch.inference_mode(), counter:
            forward()
        np.save(dump, out.float().numpy())
    except Exception as error:                              # noqa: BLE001 - reported, not hidden
        print(json.dumps({"error": f"{type(error).__name__}: {error}"[:500]}), flush=True)
        return
    print(json.dumps({"ready": True, "mode": mode, "flops": counter.get_total_flops(),
                      "first_call_s": first_call_s}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        with torch.inference_mode():
            start = time.perf_counter()
            forward()
            seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds}), flush=True)
    tail = {"peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}
    if side == "ours+compile":              # a new working size: what a recompile costs
        from birefnet_core.network.compiled import compile_state
        other = torch.randn(1, 3, size - 128, size - 128).to(
            torch.bfloat16 if dtype == "bf16" else torch.float32)
        start = time.perf_counter()
        with torch.inference_mode():
            forward(other)
        tail.update(new_size=size - 128, new_size_first_call_s=time.perf_counter() - start,
                    compile_state=compile_state(forward.model))
    print(json.dumps(tail), flush=True)


# ----------------------------------------------------------------------------- driver side

def matmul_rates(sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5
                 ) -> dict[str, float]:
    """Best GFLOP/s of square torch.matmul products (each size, best of ``repeats``) in float32
    and bfloat16, all threads: the fastest rate this CPU's matrix multiplies reach."""
    import torch
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best_rate = 0.0
        for size in sizes:
            a = torch.randn(size, size).to(dtype)
            b = torch.randn(size, size).to(dtype)
            torch.matmul(a, b)
            for _ in range(repeats):
                start = time.perf_counter()
                torch.matmul(a, b)
                best_rate = max(best_rate, 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
        rates[name] = best_rate
    return rates


class Worker:
    """One configuration's process; ``run()`` times one forward in it."""

    def __init__(self, side: str, dtype: str, args, dump: Path):
        self.side, self.dtype, self.times = side, dtype, []
        command = [sys.executable, __file__, "--worker", side, dtype, "--variants",
                   args.variant_now, "--size", str(args.size), "--official", str(args.official),
                   "--dump", str(dump)] + (["--threads", str(args.threads)] if args.threads else [])
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=ROOT)
        self.header = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            return {"error": f"worker exited with {self.process.wait()}"}
        return json.loads(line)

    def run(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        self.times.append(self._read()["seconds"])
        return self.times[-1]

    def finish(self) -> dict:
        if "error" in self.header:
            self.process.wait()
            return self.header
        self.process.stdin.write("done\n")
        self.process.stdin.flush()
        tail = self._read()
        self.process.wait()
        return {**self.header, **tail, "forward_s": statistics.median(self.times),
                "forward_all_s": self.times}


def measure_variant(args, rates: dict[str, float]) -> list[dict]:
    import numpy as np
    folder = Path(tempfile.gettempdir())
    dumps = {config: folder / f"bench_official_{os.getpid()}_{'_'.join(config)}.npy"
             for config in CONFIGS}
    workers = [Worker(side, dtype, args, dumps[(side, dtype)]) for side, dtype in CONFIGS
               if f"{side}:{dtype}" in args.configs]
    live = [w for w in workers if "error" not in w.header]
    for round_index in range(args.runs):                   # official, ours, official, ours ...
        for w in live:
            seconds = w.run()
            print(f"  run {round_index + 1}: {args.variant_now} {w.side:12s} {w.dtype} "
                  f"{seconds:7.2f} s", flush=True)
    rows = []
    for w in workers:
        row = {"variant": args.variant_now, "size": args.size, "side": w.side, "dtype": w.dtype,
               **w.finish()}
        rows.append(row)
    reference = dumps[("official", "fp32")]        # ours fp32 where the official did not run
    if not reference.exists():
        reference = dumps[("ours", "fp32")]
    for row in rows:
        path = dumps[(row["side"], row["dtype"])]
        if "error" not in row and path.exists() and reference.exists():
            against = "official_fp32" if reference == dumps[("official", "fp32")] else "ours_fp32"
            row[f"max_abs_logit_diff_vs_{against}"] = float(
                np.abs(np.load(path) - np.load(reference)).max())
    for path in dumps.values():
        path.unlink(missing_ok=True)
    return rows


def markdown_table(data: dict) -> str:
    """README's table: a row per variant and configuration, with its speed-up over the
    official float32 forward, its multiple of the floor, peak RSS and first call."""
    size = data["results"][0]["size"] if data["results"] else 1024
    lines = [f"| model, {size}² | configuration | forward | vs official fp32 | × floor | peak RSS "
             "| first call |", "|---|---|---|---|---|---|---|"]
    names = {"swin_v1_t": "Swin-T (BiRefNet_lite)", "swin_v1_l": "Swin-L (BiRefNet)"}
    for row in data["results"]:
        config = f"{row['side']} {row['dtype']}"
        if "error" in row:
            lines.append(f"| {names.get(row['variant'], row['variant'])} | {config} | cannot "
                         f"run ({row['error'].split(':')[0]}) | | | | |")
            continue
        official = next((r for r in data["results"] if r["variant"] == row["variant"]
                         and (r["side"], r["dtype"]) == ("official", "fp32")
                         and "forward_s" in r), None)
        speedup = f"{official['forward_s'] / row['forward_s']:.2f}×" if official else "—"
        first = f"{row['first_call_s']:.0f} s" if row["side"] == "ours+compile" else \
            f"{row['first_call_s']:.1f} s"
        lines.append(f"| {names.get(row['variant'], row['variant'])} | {config} | "
                     f"{row['forward_s']:.2f} s | {speedup} | {row['x_floor']:.2f}× | "
                     f"{row['peak_rss_mb'] / 1024:.1f} GB | {first} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=False,
                        help="root of an official BiRefNet checkout")
    parser.add_argument("--variants", nargs="+", default=["swin_v1_t", "swin_v1_l"])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        choices=[f"{side}:{dtype}" for side, dtype in CONFIGS],
                        help="side:dtype pairs to run (ours+compile: load_model(compile=True); "
                             "ours:int8: dynamic int8 linear layers)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every worker and for the matmul rate "
                             "(default: torch's own, one per core)")
    parser.add_argument("--out", type=Path, default=RESULTS / "speed_official_1024.json")
    parser.add_argument("--table", action="store_true", help="print README's table at the end")
    parser.add_argument("--table-only", type=Path, nargs="+", default=None,
                        help="print README's table from these JSON files and exit")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.variants[0], args.size, args.official, args.dump, args.threads)
        return 0
    if args.table_only:                                    # one table from one or more runs
        runs = [json.loads(path.read_text()) for path in args.table_only]
        print(markdown_table({"results": [row for run in runs for row in run["results"]]}))
        return 0
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    needs_checkout = any(c.startswith("official") for c in args.configs)
    if needs_checkout and (args.official is None
                           or not (args.official / "models" / "birefnet.py").is_file()):
        parser.error("--official must be the root of an official BiRefNet checkout "
                     "(the folder holding models/birefnet.py)")
    rates_before = matmul_rates()
    print(f"matmul rate: {rates_before['fp32']:.0f} GFLOP/s fp32, "
          f"{rates_before['bf16']:.0f} GFLOP/s bf16", flush=True)
    results = []
    for variant in args.variants:
        args.variant_now = variant
        results += measure_variant(args, rates_before)
    rates_after = matmul_rates()
    rates = {k: max(rates_before[k], rates_after[k]) for k in rates_before}
    floor_flops = {}      # per variant: the fewest FLOPs any implementation ran (the floor's)
    for row in results:                   # (int8 layers are invisible to the FLOP counter)
        if "flops" in row and row["dtype"] != "int8":
            floor_flops[row["variant"]] = min(row["flops"], floor_flops.get(row["variant"],
                                                                            row["flops"]))
    for row in results:                                    # the floor with the best rate seen
        if "flops" in row:
            row["floor_s"] = floor_flops[row["variant"]] / (rates[RATE_OF[row["dtype"]]] * 1e9)
            row["x_floor"] = row["forward_s"] / row["floor_s"]
    cpu = _cpu_name()
    data = {"cpu": cpu, "machine": platform.platform(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "matmul_gflops": {"before": rates_before, "after": rates_after, "used": rates},
            "official_checkout": _official_commit(args.official),
            "command": " ".join([Path(sys.executable).name] + sys.argv), "runs": args.runs,
            "results": results}
    for row in results:
        if "error" in row:
            print(f"{row['variant']} {row['side']} {row['dtype']}: {row['error']}")
        else:
            print(f"{row['variant']:10s} {row['side']:12s} {row['dtype']} {row['forward_s']:7.2f} s"
                  f"  ({row['mode']}) peak RSS {row['peak_rss_mb'] or float('nan'):6.0f} MB"
                  f"  {row['flops'] / 1e9:7.0f} GFLOP  {row['x_floor']:5.1f}x floor")
    write_json(args.out, data)
    if args.table:
        print(markdown_table(data))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _official_commit(checkout: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    return done.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
