"""The official BiRefNet code and ours, timed side by side in one run on the same synthetic weights.

Give the path of an official checkout (git clone https://github.com/ZhengPeng7/BiRefNet; never
committed here; its own needs are in requirements-bench.txt). For each variant, one worker
process per configuration (official float32, ours float32, official bfloat16 if its code can run
it, ours bfloat16) builds its model from the same synthetic state dict, is warmed up, and then
the workers take turns: official, ours, official, ours, ... so that whatever else the machine
does hits all alike. Each figure is the median of ``--runs`` timed forward passes; each worker's
peak RSS is its own. The official bfloat16 run uses ``torch.autocast`` when the model cannot be
cast (torchvision's deformable convolution has no bfloat16 CPU kernel); if neither works, the
error is recorded.

The floor: the forward's multiply-accumulate FLOPs (counted with torch.utils.flop_counter during
the warm-up, deformable convolutions included) divided by this CPU's measured matrix-multiply
rate (a large torch.matmul in that dtype, with the same threads, best of several, measured
before and after). ``x floor`` says how many times slower than that a figure is.

    python bench/bench_official.py --official /tmp/official-birefnet
    python bench/bench_official.py --official ... --variants swin_v1_t --runs 1 --table
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

from bench.common import RESULTS, peak_rss_mb, write_json  # noqa: E402

CONFIGS = (("official", "fp32"), ("ours", "fp32"), ("official", "bf16"), ("ours", "bf16"))


# ----------------------------------------------------------------------------- worker side

def _flop_formulas() -> dict:
    """Formulas the counter lacks: torchvision's deformable convolution, CPU fused attention."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    def deform_conv(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        batch, out_channels, out_h, out_w = out_shape
        return 2 * batch * out_h * out_w * out_channels * weight_shape[1] * weight_shape[2] \
            * weight_shape[3]

    def cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    formulas = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "deform_conv2d"):
        formulas[torch.ops.torchvision.deform_conv2d] = deform_conv
    return formulas


def _official_model(checkout: Path, variant: str):
    """The official BiRefNet built by its own code for ``variant`` (its Config names one
    backbone in the source, so the backbone fields are set after its own __init__)."""
    import torch

    sys.path.insert(0, str(checkout))
    import config as official_config
    from models.birefnet import BiRefNet as OfficialBiRefNet

    from tests.synthetic import manifest, synthetic_state_dict
    embed = manifest(variant)["keys"]["bb.patch_embed.proj.weight"]["shape"][0]
    original_init = official_config.Config.__init__

    def init(self):
        original_init(self)
        self.bb = variant
        channels = [embed * 8, embed * 4, embed * 2, embed]
        if self.mul_scl_ipt == "cat":
            channels = [c * 2 for c in channels]
        self.lateral_channels_in_collection = channels
        self.cxt = channels[1:][::-1][-self.cxt_num:] if self.cxt_num else []
    official_config.Config.__init__ = init
    model = OfficialBiRefNet(bb_pretrained=False).eval()
    model.load_state_dict(synthetic_state_dict(variant, model.state_dict()), strict=True)
    return model.requires_grad_(False), torch.float32


def _build(side: str, dtype: str, variant: str, size: int, checkout: Path):
    """(forward callable, input) for one configuration; raises if it cannot run."""
    import torch
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    if side == "ours":
        import birefnet_core
        from tests.synthetic import synthetic_float_weights
        model = birefnet_core.load_model(synthetic_float_weights(variant), dtype=dtype,
                                         resolution=size, patch_order="current")
        x = x.to(next(model.parameters()).dtype)
        return (lambda: model(x)), "cast"
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
        counter = FlopCounterMode(display=False, custom_mapping=_flop_formulas())
        with torch.inference_mode(), counter:
            out = forward()
        np.save(dump, out.float().numpy())
    except Exception as error:                              # noqa: BLE001 - reported, not hidden
        print(json.dumps({"error": f"{type(error).__name__}: {error}"[:500]}), flush=True)
        return
    print(json.dumps({"ready": True, "mode": mode, "flops": counter.get_total_flops()}),
          flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        with torch.inference_mode():
            start = time.perf_counter()
            forward()
            seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}),
          flush=True)


# ----------------------------------------------------------------------------- driver side

def matmul_rates(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of a size x size torch.matmul in float32 and bfloat16, all threads."""
    import torch
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * size ** 3 / best / 1e9
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
               if dtype in args.dtypes]
    live = [w for w in workers if "error" not in w.header]
    for round_index in range(args.runs):                   # official, ours, official, ours ...
        for w in live:
            seconds = w.run()
            print(f"  run {round_index + 1}: {args.variant_now} {w.side:8s} {w.dtype} "
                  f"{seconds:7.2f} s", flush=True)
    rows = []
    for w in workers:
        row = {"variant": args.variant_now, "size": args.size, "side": w.side, "dtype": w.dtype,
               **w.finish()}
        if "flops" in row:
            row["floor_s"] = row["flops"] / (rates[w.dtype] * 1e9)
            row["x_floor"] = row["forward_s"] / row["floor_s"]
        rows.append(row)
    reference = dumps[("official", "fp32")]
    for row in rows:
        path = dumps[(row["side"], row["dtype"])]
        if "error" not in row and path.exists() and reference.exists():
            row["max_abs_logit_diff_vs_official_fp32"] = float(
                np.abs(np.load(path) - np.load(reference)).max())
    for path in dumps.values():
        path.unlink(missing_ok=True)
    return rows


def markdown_table(data: dict) -> str:
    """README's table: per variant, official and ours per dtype with speed-up and x floor."""
    lines = ["| model, 1024² | official fp32 | ours fp32 | official bf16 | ours bf16 "
             "| peak RSS official / ours fp32 |", "|---|---|---|---|---|---|"]
    names = {"swin_v1_t": "Swin-T (BiRefNet_lite)", "swin_v1_l": "Swin-L (BiRefNet)"}
    for variant in dict.fromkeys(r["variant"] for r in data["results"]):
        rows = {(r["side"], r["dtype"]): r for r in data["results"] if r["variant"] == variant}
        base = rows[("official", "fp32")]["forward_s"]

        def cell(key, ratio=True):
            row = rows.get(key)
            if row is None or "error" in row:
                return "cannot run" if row else "—"
            text = f"{row['forward_s']:.2f} s"
            if ratio and key != ("official", "fp32"):
                text += f" ({base / row['forward_s']:.2f}×)"
            return text + f", {row['x_floor']:.1f}× floor"
        rss = f"{rows[('official', 'fp32')]['peak_rss_mb'] / 1024:.1f} GB / " \
              f"{rows[('ours', 'fp32')]['peak_rss_mb'] / 1024:.1f} GB"
        lines.append(f"| {names.get(variant, variant)} | {cell(('official', 'fp32'))} | "
                     f"{cell(('ours', 'fp32'))} | {cell(('official', 'bf16'))} | "
                     f"{cell(('ours', 'bf16'))} | {rss} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=False,
                        help="root of an official BiRefNet checkout")
    parser.add_argument("--variants", nargs="+", default=["swin_v1_t", "swin_v1_l"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
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
    if args.official is None or not (args.official / "models" / "birefnet.py").is_file():
        parser.error("--official must be the root of an official BiRefNet checkout "
                     "(the folder holding models/birefnet.py)")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    rates_before = matmul_rates()
    print(f"matmul rate: {rates_before['fp32']:.0f} GFLOP/s fp32, "
          f"{rates_before['bf16']:.0f} GFLOP/s bf16", flush=True)
    results = []
    for variant in args.variants:
        args.variant_now = variant
        results += measure_variant(args, rates_before)
    rates_after = matmul_rates()
    rates = {k: max(rates_before[k], rates_after[k]) for k in rates_before}
    for row in results:                                    # the floor with the best rate seen
        if "flops" in row:
            row["floor_s"] = row["flops"] / (rates[row["dtype"]] * 1e9)
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
            print(f"{row['variant']:10s} {row['side']:8s} {row['dtype']} {row['forward_s']:7.2f} s"
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
