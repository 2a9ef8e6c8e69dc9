"""ONNX export on this CPU: onnxruntime against PyTorch, export time and size, and speed.

    python bench/bench_onnx.py                      # everything (exports take minutes each)
    python bench/bench_onnx.py --only parity --backbones pvt_v2_b0 --out /tmp/part.json

1. Parity: one dynamic-size float32 file per fixture backbone and patch order; onnxruntime
   (CPU) against PyTorch float32 on every parity fixture, and at a second size from the same
   file (the fixture image resized), max |dlogit| (acceptance bound 1e-3), and against the
   official logits of the fixture.
2. float16: one fixed-size (256x256) float16 export of PVT-v2-b0; its masks against
   float32 PyTorch.
3. Speed at 1024x1024, Swin-T, one process, configurations interleaved round by round (the
   machine may be shared: contention then hits all alike): PyTorch fp32 and bf16 forward,
   onnxruntime fp32 with all graph optimisations and with none.
4. (--only large) The Swin-T dynamic file at 1024x1024 and 512x768 against PyTorch float32.
Weights are synthetic (tests/synthetic.py): speed and agreement do not depend on their values.
Writes bench/results/onnx.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import birefnet_core  # noqa: E402
from bench.common import RESULTS, write_json  # noqa: E402
from birefnet_core.export import export_onnx, load_onnx_model  # noqa: E402
from tests.synthetic import (parity_fixture, parity_fixture_names,  # noqa: E402
                             synthetic_float_weights)

SECOND_SIZE = {(256, 256): (192, 320), (192, 320): (256, 256)}


def _backbone(fixture: str) -> str:
    return fixture.split("_")[0] + "_" + fixture.split("_")[1] + "_" + fixture.split("_")[2]


def _export(model, path: Path, **options) -> dict:
    if path.exists():                                     # --files keeps earlier exports
        return {"file": str(path), "reused": True, "mib": path.stat().st_size / 2**20}
    report = export_onnx(model, path, **options)
    return {"file": str(path), "export_s": round(report.seconds, 1),
            "mib": round(report.bytes / 2**20, 1)}


def parity(backbones: list[str] | None, files: Path, result: dict, out: Path) -> list[dict]:
    rows = result.setdefault("parity", [])
    groups: dict[tuple[str, str], list[str]] = {}
    for name in parity_fixture_names():
        order = "legacy" if name.endswith("_legacy") else "current"
        if backbones is None or _backbone(name) in backbones:
            groups.setdefault((_backbone(name), order), []).append(name)
    for (backbone, order), names in groups.items():
        model = birefnet_core.load_model(synthetic_float_weights(backbone), patch_order=order)
        path = files / f"{backbone}_{order}_dynamic.onnx"
        exported = _export(model, path, size=(256, 256), dynamic=True)
        runtime = load_onnx_model(path, device="cpu")
        for name in names:
            fixture = parity_fixture(name)
            x = torch.from_numpy(fixture["input"])
            second = SECOND_SIZE[tuple(x.shape[-2:])]
            sizes = {}
            for size, image in ((tuple(x.shape[-2:]), x),
                                (second, F.interpolate(x, size=second, mode="bilinear"))):
                with torch.inference_mode():
                    reference = model(image)
                got = runtime(image)
                sizes[f"{size[0]}x{size[1]}"] = float((got - reference).abs().max())
                if size == tuple(x.shape[-2:]):
                    official = float(np.abs(got.numpy() - fixture["logits"]).max())
            row = {"fixture": name, "patch_order": order, **exported,
                   "max_abs_dlogit_vs_torch": sizes, "max_abs_dlogit_vs_official": official}
            print(row, flush=True)
            rows.append(row)
        write_json(out, result)                           # after every exported file
    return rows


def float16(files: Path) -> dict:
    model = birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"))
    path = files / "pvt_v2_b0_fp16_256.onnx"
    exported = _export(model, path, size=(256, 256), dtype="fp16")
    runtime = load_onnx_model(path, device="cpu")
    diffs = []
    for name in ("pvt_v2_b0_256x256", "pvt_v2_b0_192x320"):
        image = torch.from_numpy(parity_fixture(name)["image"]).permute(2, 0, 1)[None]
        full = birefnet_core.predict(model, image, resolution=256)
        half = birefnet_core.predict(runtime, image)
        diffs.append({"fixture": name, "max_abs_mask_diff": float((full - half).abs().max()),
                      "mean_abs_mask_diff": float((full - half).abs().mean())})
    row = {**exported, "masks": diffs}
    print(row, flush=True)
    return row


def speed(files: Path, rounds: int) -> dict:
    size = 1024
    weights = synthetic_float_weights("swin_v1_t")
    path = files / "swin_v1_t_current_dynamic.onnx"
    fp32 = birefnet_core.load_model(weights)
    _export(fp32, path, size=(256, 256), dynamic=True)
    engines = {
        "torch_fp32": fp32,
        "torch_bf16": birefnet_core.load_model(weights, dtype="bf16"),
        "onnxruntime_fp32_optimised": load_onnx_model(path, device="cpu", graph_optimization="all"),
        "onnxruntime_fp32_unoptimised": load_onnx_model(path, device="cpu",
                                                        graph_optimization="none"),
    }
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in engines}
    for round_index in range(rounds + 1):                 # round 0 warms up
        for name, engine in engines.items():
            started = time.perf_counter()
            with torch.inference_mode():
                engine(x.to(torch.bfloat16) if name == "torch_bf16" else x)
            if round_index:
                times[name].append(time.perf_counter() - started)
        print({k: [round(t, 2) for t in v] for k, v in times.items()}, flush=True)
    return {"size": size, "variant": "swin_v1_t", "rounds": rounds,
            "median_s": {k: statistics.median(v) for k, v in times.items()}, "all_s": times}


def large_sizes(files: Path) -> list[dict]:
    """The Swin-T dynamic file at working sizes far from its trace: max |dlogit| against
    PyTorch float32 on a random normalised image (one per size)."""
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    path = files / "swin_v1_t_current_dynamic.onnx"
    _export(model, path, size=(256, 256), dynamic=True)
    runtime = load_onnx_model(path, device="cpu")
    rows = []
    for size in ((1024, 1024), (512, 768)):
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            reference = model(x)
        rows.append({"size": list(size), "max_abs_dlogit_vs_torch":
                     float((runtime(x) - reference).abs().max()),
                     "max_abs_logit": float(reference.abs().max())})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=None)
    parser.add_argument("--files", type=Path, default=Path("/tmp/birefnet_onnx_bench"),
                        help="where the exported files go (kept and reused)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=("speed", "parity", "float16", "large"),
                        default=("speed", "parity", "float16", "large"),
                        help="run only these parts (several processes can share the work)")
    parser.add_argument("--out", type=Path, default=RESULTS / "onnx.json")
    args = parser.parse_args()
    args.files.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    # Parts run separately add to the same file; each part records the command that made it.
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.pop("not_measured", None)
    result.update({"machine": platform.platform(), "cpus": os.cpu_count(),
                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "onnxruntime": onnxruntime.__version__})
    command = "python bench/bench_onnx.py " + " ".join(sys.argv[1:])
    result.setdefault("commands", {}).update({part: command for part in args.only})
    if "parity" in args.only:
        result["parity"] = []                   # this run's rows replace the earlier ones
    if "speed" in args.only:
        result["speed_1024"] = speed(args.files, args.rounds)
        result["speed_1024"]["load_average_before"] = os.getloadavg()[0]
        write_json(args.out, result)
    if "parity" in args.only:
        parity(args.backbones, args.files, result, args.out)
    if "float16" in args.only:
        result["float16"] = float16(args.files)
        write_json(args.out, result)
    if "large" in args.only:
        result["swin_t_large_sizes"] = large_sizes(args.files)
        write_json(args.out, result)


if __name__ == "__main__":
    main()
