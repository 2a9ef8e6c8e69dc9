"""Every accelerator path of the pack, checked, judged and timed in one command on a CUDA machine.

    python bench/gpu_check.py --out bench/results/gpu_check.json [--official DIR] [--onnx F]
    python bench/gpu_check.py --cpu-smoke --out /tmp/smoke.json   # the script itself, tiny

It exits 1 when a step fails, when anything it computed is not finite (a NaN or infinity in a
mask, a logit or a measured difference), or when a mask is further from the float32 mask than
``MASK_BOUNDS`` allows (the judgement is printed and stored under "failures"); 0 otherwise.

Steps, in this order (each prints a line and the JSON is rewritten after each, so a run cut
short keeps what it measured; a step that would start after ``--budget-s`` is skipped with a
line saying so):
  parity     float32 on CUDA against the CPU, and against the official logits, on every parity
             fixture (tests/fixtures): max |dlogit| and max |dmask| (judged: fp32 bound)
  precision  fp16 and bf16 masks against float32 on CUDA, per fixture (judged: their bounds)
  speed      1024x1024 forward, Swin-T and Swin-L, batch 1 and 4, fp16 and bf16: median time
             and peak device memory; with --official DIR (an official BiRefNet checkout) its
             code beside ours in fp16 on the same synthetic weights
  memory     peak device memory of one fp16 forward at 1024x1024 and 2048x2048, per variant
  video      matte_video frames/s (1920x1080 frames, stabilised)
  detail     refine_detail on an 8192x5464 image (skipped when the function is absent)
  onnx       an exported file (--onnx, else Swin-T exported here) through onnxruntime's CUDA
             provider when onnxruntime-gpu imports: time and |dlogit| against torch float32
  compile    the speed step's configurations with torch.compile (compile time apart)
Weights are synthetic (tests/synthetic.py). Without CUDA the script stops with exit status 2
unless --cpu-smoke runs every step tiny on the CPU: there the device is the CPU itself (its
parity step compares the CPU with itself), so a smoke run tests the wiring and the judging
(tests/test_gpu_check.py injects NaN and out-of-bound masks), never a GPU. The default budget
(420 s, checked before every step and every speed configuration) keeps a run on an H100 well
inside 10 minutes.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import birefnet_core  # noqa: E402
from birefnet_core.network.compiled import compile_model  # noqa: E402
from bench.common import RESULTS, write_json  # noqa: E402
from tests.synthetic import (parity_fixture, parity_fixture_names,  # noqa: E402
                             synthetic_float_weights)

STEPS = ("parity", "precision", "speed", "memory", "video", "detail", "onnx", "compile")
# The largest |mask - float32 mask| a run may show, per dtype (README "On a GPU"). On the CPU
# (python bench/bench_precision.py --dtypes bf16 fp16, every parity fixture) float16 masks
# moved at most 0.0005 and bfloat16 ones 0.0031 (0.8 of an 8-bit grey level: a 8-bit bfloat16
# product rounds at 2^-8 = 0.0039). The bounds leave room for the GPU's own kernels (cuDNN's
# TF32 convolutions in "float32", tensor-core accumulation order): two grey levels for float32
# against the CPU and for float16, four for bfloat16. A wrong path (a mixed-up dtype, a buffer
# left behind, a broken kernel) moves masks by tenths.
MASK_BOUNDS = {"fp32": 2 / 255, "fp16": 2 / 255, "bf16": 4 / 255}


class Check:
    """Settings for a full run or a CPU smoke run, the clock, and the results so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke, self.out, self.onnx_file = args.cpu_smoke, args.out, args.onnx
        self.device = torch.device("cpu" if self.smoke else "cuda")
        self.deadline = time.monotonic() + args.budget_s
        self.official, self.dtypes = args.official, tuple(args.dtypes)
        self.size = 64 if self.smoke else 1024
        self.memory_sizes = (64, 128) if self.smoke else (1024, 2048)
        self.variants = ("pvt_v2_b0",) if self.smoke else ("swin_v1_t", "swin_v1_l")
        self.batches = (1, 2) if self.smoke else (1, 4)
        self.runs = 1 if self.smoke else 5
        self.fixtures = [name for name in parity_fixture_names()
                         if not self.smoke or _backbone(name) in self.variants]
        self.result: dict = {"mode": "cpu-smoke" if self.smoke else "cuda",
                             "torch": torch.__version__, "steps": {}}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)

    def timed(self, call, runs: int | None = None) -> float:
        """Median seconds of ``runs`` calls after one warm-up call."""
        call()
        self.sync()
        times = []
        for _ in range(runs or self.runs):
            started = time.perf_counter()
            call()
            self.sync()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def model(self, backbone: str, dtype: str = "fp32", order: str = "current"):
        return birefnet_core.load_model(synthetic_float_weights(backbone), device=self.device,
                                        dtype=dtype, patch_order=order)


def _backbone(fixture: str) -> str:
    return "_".join(fixture.split("_")[:3])


def step_parity(check: Check) -> list[dict]:
    rows = []
    for name in check.fixtures:
        order = "legacy" if name.endswith("_legacy") else "current"
        fixture = parity_fixture(name)
        x = torch.from_numpy(fixture["input"])
        cpu = birefnet_core.load_model(synthetic_float_weights(_backbone(name)), patch_order=order)
        with torch.inference_mode():
            on_cpu = cpu(x)
            on_device = check.model(_backbone(name), order=order)(x.to(check.device)).cpu()
        rows.append({"fixture": name, "dtype": "fp32", "finite": _finite(on_device),
                     "max_abs_dlogit_vs_cpu": float((on_device - on_cpu).abs().max()),
                     "max_abs_mask_diff": float((on_device.sigmoid() - on_cpu.sigmoid())
                                                .abs().max()),
                     "max_abs_dlogit_vs_official":
                         float(np.abs(on_device.numpy() - fixture["logits"]).max())})
        print("  ", rows[-1], flush=True)
    return rows


def step_precision(check: Check) -> list[dict]:
    rows = []
    for name in check.fixtures:
        order = "legacy" if name.endswith("_legacy") else "current"
        image = torch.from_numpy(parity_fixture(name)["image"]).permute(2, 0, 1)[None]
        image = image.to(check.device)
        size = tuple(image.shape[-2:])                    # the fixture's own size
        full = birefnet_core.predict(check.model(_backbone(name), order=order), image, size)
        for dtype in check.dtypes:
            low = birefnet_core.predict(check.model(_backbone(name), dtype, order), image, size)
            rows.append({"fixture": name, "dtype": dtype, "finite": _finite(low),
                         "max_abs_mask_diff": float((low - full).abs().max()),
                         "mean_abs_mask_diff": float((low - full).abs().mean())})
            print("  ", rows[-1], flush=True)
    return rows


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor.float()).all())


def _time_batches(check: Check, runner, dtype: torch.dtype, labels: dict) -> list[dict]:
    """One row per batch size: first call, median time, peak memory, finite output."""
    rows = []
    for batch in check.batches:
        if check.out_of_time():
            rows.append({**labels, "batch": batch, "skipped": "budget spent"})
            continue
        x = torch.rand(batch, 3, check.size, check.size, device=check.device, dtype=dtype)
        check.reset_peak()
        started = time.perf_counter()
        with torch.inference_mode():
            out = runner(x)
            check.sync()
            first = time.perf_counter() - started
            seconds = check.timed(lambda: runner(x))
        rows.append({**labels, "batch": batch, "size": check.size,
                     "first_call_s": round(first, 3), "median_s": round(seconds, 4),
                     "images_per_s": round(batch / seconds, 2), "peak_mib": check.peak_mib(),
                     "finite": _finite(out)})
        print("  ", rows[-1], flush=True)
    return rows


def _official_runner(check: Check, variant: str):
    """The official code's model (``--official`` checkout) in float16 on the device."""
    from bench.bench_official import _official_model
    model, _ = _official_model(check.official, variant)
    model = model.to(check.device, torch.float32 if check.smoke else torch.float16)
    return lambda x: model(x)[-1]


def _speed_rows(check: Check, compiled: bool) -> list[dict]:
    rows = []
    for variant in check.variants:
        if check.official is not None and not compiled:
            dtype = torch.float32 if check.smoke else torch.float16
            rows += _time_batches(check, _official_runner(check, variant), dtype,
                                  {"side": "official", "variant": variant, "dtype": "fp16"})
        for dtype in check.dtypes:
            if check.out_of_time():
                rows.append({"variant": variant, "dtype": dtype, "skipped": "budget spent"})
                continue
            model = check.model(variant, dtype)
            runner = model
            if compiled and check.smoke:  # the smoke run checks the wiring, not inductor
                runner = torch.compile(model, backend="eager")
            elif compiled:                # the project's own path: load_model(compile=True)
                runner = compile_model(model)
            rows += _time_batches(check, runner, next(model.parameters()).dtype,
                                  {"side": "ours", "variant": variant, "dtype": dtype,
                                   "compiled": compiled})
            model = runner = None                      # free the device memory
    return rows


def step_speed(check: Check) -> list[dict]:
    return _speed_rows(check, compiled=False)


def step_compile(check: Check) -> list[dict]:
    return _speed_rows(check, compiled=True)


def step_memory(check: Check) -> list[dict]:
    """Peak device memory of one float16 forward (batch 1) per variant and size."""
    rows = []
    for variant in check.variants:
        model = check.model(variant, "fp32" if check.smoke else "fp16")
        for size in check.memory_sizes:
            if check.out_of_time():
                rows.append({"variant": variant, "size": size, "skipped": "budget spent"})
                continue
            x = torch.rand(1, 3, size, size, device=check.device,
                           dtype=next(model.parameters()).dtype)
            check.reset_peak()
            with torch.inference_mode():
                out = model(x)
                check.sync()
            rows.append({"variant": variant, "size": size, "peak_mib": check.peak_mib(),
                         "finite": _finite(out)})
            print("  ", rows[-1], flush=True)
        model = None
    return rows


def step_video(check: Check) -> dict:
    height, width, count = (72, 128, 4) if check.smoke else (1080, 1920, 24)
    frames = torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(0))
    model = check.model(check.variants[0], "fp32" if check.smoke else "fp16")
    check.reset_peak()
    mattes = []
    seconds = check.timed(lambda: mattes.append(birefnet_core.matte_video(
        model, frames, stabilize=0.5, resolution=check.size)), runs=1)
    return {"variant": check.variants[0], "frames": count, "frame_size": [height, width],
            "resolution": check.size, "frames_per_s": round(count / seconds, 2),
            "peak_mib": check.peak_mib(), "finite": _finite(mattes[-1])}


def step_detail(check: Check) -> dict:
    refine_detail = getattr(birefnet_core, "refine_detail", None)
    if refine_detail is None:
        return {"skipped": "birefnet_core.refine_detail does not exist in this checkout"}
    height, width = (256, 384) if check.smoke else (5464, 8192)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width),
                            indexing="ij")
    disc = ((yy ** 2 + xx ** 2) < 0.4).float()
    image = torch.stack((disc, 1 - disc, 0.5 * disc + 0.25))[None]
    model = check.model(check.variants[0], "fp32" if check.smoke else "fp16")
    check.reset_peak()
    started = time.perf_counter()
    masks = refine_detail(model, image, resolution=check.size, tile_size=check.size)
    check.sync()
    return {"variant": check.variants[0], "image": [height, width],
            "seconds": round(time.perf_counter() - started, 2), "peak_mib": check.peak_mib(),
            "mask_shape": list(masks.shape), "finite": _finite(masks)}


def step_onnx(check: Check) -> dict:
    try:
        import onnxruntime
    except ImportError:
        return {"skipped": "onnxruntime does not import (pip install onnxruntime-gpu)"}
    from birefnet_core.export import export_onnx, load_onnx_model
    providers = onnxruntime.get_available_providers()
    if not check.smoke and "CUDAExecutionProvider" not in providers:
        return {"skipped": f"onnxruntime has no CUDA provider ({providers}): "
                           "pip install onnxruntime-gpu"}
    if check.smoke and check.onnx_file is None:
        return {"skipped": "--cpu-smoke exports nothing (minutes on a CPU): pass --onnx FILE"}
    path, exported = check.onnx_file, None
    if path is None:
        path = Path(tempfile.mkdtemp()) / "swin_v1_t_dynamic.onnx"
        source = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
        exported = export_onnx(source, path, size=(256, 256), dynamic=True).seconds
    runtime = load_onnx_model(path, device="cpu" if check.smoke else "cuda")
    # The file must come from the synthetic weights of its variant (as bench_onnx's do).
    reference = birefnet_core.load_model(synthetic_float_weights(runtime.info.variant),
                                         patch_order=runtime.info.patch_order)
    x = torch.rand(1, 3, check.size, check.size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = reference.to(check.device)(x.to(check.device)).cpu()
    got = runtime(x)
    return {"file": str(path), "export_s": exported, "providers": runtime.providers,
            "finite": _finite(got),
            "size": check.size, "max_abs_dlogit_vs_torch_fp32": float((got - expected).abs().max()),
            "median_s": round(check.timed(lambda: runtime(x)), 4)}


def _numbers(value, path: str):
    """(path, number) for every float in a nested result, and (path, flag) for "finite"."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}[{index}]")
    elif isinstance(value, (float, bool)):
        yield path, value


def judge(steps: dict) -> list[str]:
    """Why a run fails: failed steps, anything not finite, masks beyond ``MASK_BOUNDS``."""
    failures = [f"{name}: {step['result']['failed']}" for name, step in steps.items()
                if isinstance(step.get("result"), dict) and "failed" in step["result"]]
    for path, value in _numbers(steps, "steps"):
        if value is False and path.endswith(".finite"):
            failures.append(f"{path.removesuffix('.finite')}: output not finite")
        elif isinstance(value, float) and not math.isfinite(value):
            failures.append(f"{path}: {value} is not finite")
    for name in ("parity", "precision"):
        rows = steps.get(name, {}).get("result", [])
        for row in rows if isinstance(rows, list) else []:
            bound = MASK_BOUNDS[row["dtype"]]
            if row["max_abs_mask_diff"] > bound:     # NaN compares False: caught above
                failures.append(f"{name} {row['fixture']} {row['dtype']}: mask differs from "
                                f"float32 by {row['max_abs_mask_diff']:.4f} > {bound:.4f}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every step tiny on the CPU (tests the script and its "
                             "judging, measures nothing)")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--dtypes", nargs="+", choices=("fp16", "bf16"), default=["fp16", "bf16"],
                        help="the low precisions of the precision and speed steps")
    parser.add_argument("--budget-s", type=float, default=420,
                        help="start no step or speed configuration after this many seconds "
                             "(default 420)")
    parser.add_argument("--official", type=Path, default=None, metavar="DIR",
                        help="an official BiRefNet checkout: time its code beside ours")
    parser.add_argument("--onnx", type=Path, default=None,
                        help="an exported file for the onnx step (default: export Swin-T here)")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("error: no CUDA device: bench/gpu_check.py measures the GPU paths and needs one "
              f"(torch {torch.__version__} sees none); run it on a CUDA machine, or pass "
              "--cpu-smoke to test the script itself on the CPU", file=sys.stderr)
        return 2
    if args.official is not None and not (args.official / "models" / "birefnet.py").is_file():
        parser.error("--official must be the root of an official BiRefNet checkout (the "
                     "folder holding models/birefnet.py)")
    check = Check(args)
    if check.device.type == "cuda":
        check.result["device"] = torch.cuda.get_device_name()
    print(f"gpu_check: {check.result['mode']} on {check.result.get('device', 'cpu')}", flush=True)
    for name in STEPS:
        if name in args.steps:
            run_step(check, name, args)
    failures = judge(check.result["steps"])
    check.result["failures"] = failures
    check.result["mask_bounds"] = MASK_BOUNDS
    write_json(args.out, check.result)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr, flush=True)
    print(f"gpu_check: {'FAILED, ' + str(len(failures)) + ' problem(s)' if failures else 'passed'}",
          flush=True)
    return 1 if failures else 0


def run_step(check: Check, name: str, args: argparse.Namespace) -> None:
    """One step, its outcome (or its error, or a skip when the budget is spent) stored."""
    if check.out_of_time():
        check.result["steps"][name] = {"skipped": f"budget of {args.budget_s:.0f} s spent"}
        print(f"{name}: skipped, budget spent", flush=True)
        return
    print(f"{name}:", flush=True)
    started = time.perf_counter()
    try:
        outcome = globals()[f"step_{name}"](check)
    except Exception as error:          # noqa: BLE001 - a failed step is a result too
        outcome = {"failed": f"{type(error).__name__}: {error}"}
    if isinstance(outcome, dict) and ("skipped" in outcome or "failed" in outcome):
        print(f"  {name}: {outcome}", flush=True)
    check.result["steps"][name] = {"seconds": round(time.perf_counter() - started, 1),
                                   "result": outcome}
    write_json(check.out, check.result)


if __name__ == "__main__":
    sys.exit(main())
