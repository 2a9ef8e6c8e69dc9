"""refine_detail and segment_region: accuracy with the resolution-limited oracle, seams, and
memory/time on the CPU with Swin-T synthetic weights. Numbers to bench/results/detail.json
(each section updates its own key).

    python bench/bench_detail.py accuracy    # 6000x4000 and 8192x5464 hair scenes, oracle
    python bench/bench_detail.py seams       # an oracle adding a different bias per call
    python bench/bench_detail.py region      # a 600x800 subject in a 6000x4000 frame
    python bench/bench_detail.py memory      # Swin-T, CPU, each run in its own process
    python bench/bench_detail.py picture     # the README's before/after (assets/readme)

The oracle (tests/oracle.py) recovers alpha exactly from the pixels it is given, at the working
resolution it is given them: plain ``predict`` at 1024 x 1024 shows what that resolution loses,
``refine_detail`` what the tiles bring back. Errors against the true alpha: MAE, and the
gradient error of matting benchmarks (Rhemann et al. 2009: Gaussian derivative filters with
sigma 1.4, the squared difference of gradient magnitudes, summed, divided by 1000), in the
uncertain band of the coarse mask and over the whole image.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, peak_rss_mb  # noqa: E402
from birefnet_core import predict, refine_detail, segment_region  # noqa: E402
from birefnet_core.inference.tiles import band_pixels  # noqa: E402
from tests.oracle import ResolutionLimitedOracle, composite, scene, scene_alpha, tile_border_pairs  # noqa: E402

OUT = RESULTS / "detail.json"
SIZES = {"6000x4000": (4000, 6000), "8192x5464": (5464, 8192)}
WORKING = 1024


def gradient_magnitude(alpha: torch.Tensor, sigma: float = 1.4) -> torch.Tensor:
    """(H, W) -> |grad| of alpha through first-derivative-of-Gaussian filters."""
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    gauss = torch.exp(-x ** 2 / (2 * sigma ** 2))
    gauss /= gauss.sum()
    deriv = -x / sigma ** 2 * gauss
    deriv /= deriv.abs().sum() / 2
    image = alpha[None, None].float()

    def separable(along_x: torch.Tensor, along_y: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode="replicate"),
                       along_x.view(1, 1, 1, -1))
        return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"),
                        along_y.view(1, 1, -1, 1))[0, 0]
    return torch.hypot(separable(deriv, gauss), separable(gauss, deriv))


def errors(mask: torch.Tensor, alpha: torch.Tensor, band: torch.Tensor) -> dict:
    """MAE and gradient error of (H, W) mask against alpha, in the band and everywhere."""
    difference = (mask - alpha).abs()
    gradient = (gradient_magnitude(mask) - gradient_magnitude(alpha)) ** 2
    return {"mae_band": difference[band].mean().item(), "mae_image": difference.mean().item(),
            "grad_band": gradient[band].sum().item() / 1000,
            "grad_image": gradient.sum().item() / 1000}


def accuracy(sizes: list[str]) -> dict:
    results = {}
    for name in sizes:
        height, width = SIZES[name]
        image, alpha = scene(height, width, seed=7)
        oracle = ResolutionLimitedOracle(WORKING)
        start = time.perf_counter()
        coarse = predict(oracle, image)
        coarse_s = time.perf_counter() - start
        start = time.perf_counter()
        refined = refine_detail(oracle, image, coarse)
        refine_s = time.perf_counter() - start
        tiles = sum(batch for batch, _, _ in oracle.calls[1:])
        band = band_pixels(coarse[0, 0], max(8, round(3 * max(height, width) / WORKING)))
        plain = errors(coarse[0, 0], alpha[0, 0], band)
        detail = errors(refined[0, 0], alpha[0, 0], band)
        results[name] = {"tiles": tiles, "band_fraction": band.float().mean().item(),
                         "predict_1024": plain, "refine_detail": detail,
                         "band_mae_ratio": plain["mae_band"] / detail["mae_band"],
                         "seconds_predict": coarse_s, "seconds_refine_detail": refine_s}
        print(f"{name}: {tiles} tiles, band {results[name]['band_fraction']:.1%} of the image")
        for label, row in (("predict 1024²", plain), ("refine_detail", detail)):
            print(f"  {label:14s} MAE band {row['mae_band']:.5f} image {row['mae_image']:.6f}"
                  f"  Grad band {row['grad_band']:.1f} image {row['grad_image']:.1f}")
        print(f"  band MAE falls {results[name]['band_mae_ratio']:.0f}-fold")
        del image, alpha, coarse, refined, band
    return results


def _steps(mask: torch.Tensor, windows: list, region: torch.Tensor) -> dict:
    """Steps between neighbouring pixels (both in ``region``): across a tile border vs not."""
    height, width = mask.shape
    across, down = tile_border_pairs(windows, height, width)
    pairs_x, pairs_y = region[:, 1:] & region[:, :-1], region[1:] & region[:-1]
    step_x, step_y = (mask[:, 1:] - mask[:, :-1]).abs(), (mask[1:] - mask[:-1]).abs()
    border = torch.cat([step_x[across & pairs_x], step_y[down & pairs_y]])
    inside = torch.cat([step_x[~across & pairs_x], step_y[~down & pairs_y]])
    summary = {}
    for label, values in (("border", border), ("inside", inside)):
        summary[label] = {"pairs": values.numel(), "max": values.max().item(),
                          "p99": torch.quantile(values[:2_000_000].double(), 0.99).item(),
                          "mean": values.mean().item()}
    return summary


def seams() -> dict:
    """Per-call biases in [-1.5, 1.5] (seeded), one tile per call."""
    from birefnet_core.inference.tiles import cover_band
    biases = torch.empty(4096).uniform_(-1.5, 1.5, generator=torch.Generator().manual_seed(0))
    results = {}
    height, width = SIZES["6000x4000"]
    for label in ("translucent_sheet", "hair_scene"):
        if label == "translucent_sheet":      # every tile constant: any step is the blend's
            image = composite(torch.full((1, 1, height, width), 0.5))
            coarse = torch.full((1, 1, height, width), 0.5)
        else:
            image, _ = scene(height, width, seed=7)
            coarse = predict(ResolutionLimitedOracle(WORKING), image)
        oracle = ResolutionLimitedOracle(WORKING, bias=lambda call: float(biases[call]))
        band_width = max(8, round(3 * max(height, width) / WORKING))
        band = band_pixels(coarse[0, 0], band_width)
        refined = refine_detail(oracle, image, coarse, batch_size=1, band=band_width)
        windows = cover_band(band, (WORKING, WORKING), 0.25)
        results[label] = _steps(refined[0, 0], windows, band)
        results[label]["tiles"] = len(windows)
        row = results[label]
        print(f"seams, {label}: {len(windows)} tiles; |step| across tile borders max "
              f"{row['border']['max']:.4f} p99 {row['border']['p99']:.4f}; inside tiles max "
              f"{row['inside']['max']:.4f} p99 {row['inside']['p99']:.4f}")
        del image, coarse, refined, band
    return results


def region() -> dict:
    height, width = SIZES["6000x4000"]
    subject = scene_alpha(800, 600, seed=11, center=(0.62, 0.5), size=0.9)      # 600 x 800
    alpha = torch.zeros(1, 1, height, width)
    top, left = 2100, 3700
    alpha[..., top:top + 800, left:left + 600] = subject
    image = composite(alpha)
    guide = F.max_pool2d((alpha > 0.5).float(), 31, stride=1, padding=15)   # a rough selector
    oracle = ResolutionLimitedOracle(WORKING)
    plain = predict(oracle, image)
    guided = segment_region(oracle, image, guide)
    refined = refine_detail(oracle, image, guided)
    band = band_pixels(plain[0, 0], 18) | band_pixels(guided[0, 0], 18)
    results = {name: errors(mask[0, 0], alpha[0, 0], band)
               for name, mask in (("predict_1024", plain), ("segment_region", guided),
                                  ("segment_region_then_refine_detail", refined))}
    for name, row in results.items():
        print(f"region, {name:34s} MAE band {row['mae_band']:.5f} image "
              f"{row['mae_image']:.7f}  Grad band {row['grad_band']:.1f}")
    return results


def _swin_t():
    from birefnet_core import load_model
    from tests.synthetic import synthetic_float_weights
    return load_model(synthetic_float_weights("swin_v1_t"))


def _worker_tiles(batch_size: int) -> dict:
    """8192x5464, a small subject: oracle coarse mask, Swin-T on the tiles, CPU."""
    height, width = SIZES["8192x5464"]
    image, alpha = scene(height, width, seed=7, size=0.12)
    del alpha
    coarse = predict(ResolutionLimitedOracle(WORKING), image)
    model = _swin_t()
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append([time.perf_counter()]))
    model.register_forward_hook(lambda *_: forwards[-1].append(time.perf_counter()))
    predict(model, image[..., :WORKING, :WORKING])                 # one tile, alone
    one_tile = forwards[-1][1] - forwards[-1][0]
    forwards.clear()
    start = time.perf_counter()
    refine_detail(model, image, coarse, batch_size=batch_size)
    total = time.perf_counter() - start
    in_forward = sum(end - begin for begin, end in forwards)
    return {"image": "8192x5464", "batch_size": batch_size, "forward_calls": len(forwards),
            "seconds_refine_detail": total, "seconds_one_tile_forward": one_tile,
            "seconds_in_forwards": in_forward,
            "ratio_to_tiles_x_one_forward": total / (len(forwards) * one_tile),
            "peak_rss_mb": peak_rss_mb()}


def _worker_whole(side: int) -> dict:
    """One whole-image forward at side x side (the alternative to tiles)."""
    model = _swin_t()
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    predict(model, image, resolution=side)
    return {"side": side, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def _worker_uncertain(batch_size: int) -> dict:
    """The Detail node (in-process 2024 ComfyUI, CPU) on an 8192x5464 photo, no mask given,
    with PVT-v2-b0 synthetic weights whose logits are zeroed by a hook: the coarse pass and
    every tile say 0.5, so the whole frame is uncertain and the band covers it all.
    batch_size 0: the node's auto."""
    from tests.comfyui_inprocess import import_pack
    from tests.synthetic import synthetic_float_weights
    pack = import_pack()
    model = pack.birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"))
    model.register_forward_hook(lambda _module, _inputs, logits: logits * 0)
    forwards = []
    model.register_forward_pre_hook(lambda _module, inputs: forwards.append(inputs[0].shape[0]))
    cpu = torch.device("cpu")
    patcher = pack.nodes.runtime.BiRefNetPatcher(model, load_device=cpu, offload_device=cpu)
    height, width = SIZES["8192x5464"]
    image = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    mask, _cutout = pack.nodes.BiRefNetDetail().refine(
        patcher, image, scale=1.0, band=0, overlap=0.25, max_tiles=128, batch_size=batch_size,
        resolution=0)
    return {"image": "8192x5464", "model": "pvt_v2_b0 synthetic, logits zeroed",
            "batch_size": batch_size, "forward_batches": forwards,
            "mask_mean": mask.mean().item(), "seconds": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb()}


def memory(whole_sides: list[int], tiles: bool) -> dict:
    """Each measurement in a fresh process (peak RSS is per process); the rows already in the
    results file are kept unless measured again."""
    old = json.loads(OUT.read_text()).get("memory", {}) if OUT.exists() else {}
    results = {**old, "tiles": _run_worker(["_tiles", "1"])} if tiles else dict(old)
    for side in whole_sides:
        results[f"whole_{side}"] = _run_worker(["_whole", str(side)])
    for name, row in results.items():
        print(f"memory, {name}: {json.dumps(row)}")
    return results


def _run_worker(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        return {"failed": done.returncode, "stderr_tail": done.stderr[-800:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def picture(path: Path) -> dict:
    """Truth | predict at 1024² | refine_detail on a 512 x 512 crop of the 8192x5464 scene's
    hair, each alpha white on black at one screen pixel per image pixel."""
    from PIL import Image, ImageDraw, ImageFont
    height, width = SIZES["8192x5464"]
    image, alpha = scene(height, width, seed=7)
    oracle = ResolutionLimitedOracle(WORKING)
    coarse = predict(oracle, image)
    refined = refine_detail(oracle, image, coarse)
    top, left = int(0.6 * height - 0.28 * height * 0.8) - 700, int(0.5 * width) - 256
    panels = []
    for label, mask in (("true alpha", alpha), ("predict at 1024x1024", coarse),
                        ("refine_detail", refined)):
        crop = mask[0, 0, top:top + 512, left:left + 512].clamp(0, 1)
        tile = Image.fromarray((crop.numpy() * 255).round().astype("uint8"), "L")
        tile = tile.resize((1024, 1024), Image.NEAREST).convert("RGB")
        draw, font = ImageDraw.Draw(tile), ImageFont.load_default(size=56)
        draw.rectangle(draw.textbbox((20, 14), label, font=font), fill=(0, 0, 0))
        draw.text((20, 14), label, fill=(255, 90, 90), font=font)
        panels.append(tile)
    sheet = Image.new("RGB", (3 * 1024 + 2 * 8, 1024), (40, 40, 40))
    for index, tile in enumerate(panels):
        sheet.paste(tile, (index * (1024 + 8), 0))
    sheet = sheet.resize((sheet.width // 2, sheet.height // 2), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    print(f"wrote {path}")
    return {"path": str(path.relative_to(ROOT)), "crop": [top, left, 512, 512]}


def _update(section: str, data: dict) -> None:
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results[section] = data
    results["machine"] = ("CPU, 2 cores shared with other jobs (load average above 10 during "
                          "the runs): times are indicative")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"updated {OUT} [{section}]")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        worker = {"_tiles": lambda a: _worker_tiles(int(a)),
                  "_whole": lambda a: _worker_whole(int(a)),
                  "_uncertain": lambda a: _worker_uncertain(int(a))}[sys.argv[1]]
        print(json.dumps(worker(sys.argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=["accuracy", "seams", "region", "memory", "picture"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--whole", nargs="*", type=int, default=[2048],
                        help="sides of the whole-image forwards to measure (memory)")
    parser.add_argument("--no-tiles", action="store_true",
                        help="memory: only the whole-image forwards")
    parser.add_argument("--picture", default=str(ROOT / "assets" / "readme" /
                                                  "detail_before_after.png"))
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.section == "accuracy":
        _update("accuracy", accuracy(args.sizes))
    elif args.section == "seams":
        _update("seams", seams())
    elif args.section == "region":
        _update("region", region())
    elif args.section == "memory":
        _update("memory", memory(args.whole, not args.no_tiles))
    else:
        _update("picture", picture(Path(args.picture)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
