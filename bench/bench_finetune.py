"""Fine-tuning on the CPU: does the loss fall, and do held-out masks improve?

A small variant (pvt_v2_b0 with the synthetic weights of tests/synthetic.py, i.e. no
pre-training) is fine-tuned with ``birefnet_core.finetune`` on procedurally drawn images
(seeded): one to three discs, ellipses or polygons with a noisy warm-coloured fill over textured
backgrounds (colour waves, stripes, noise), with exact binary masks. Training images are written
to a temporary images/ + masks/ folder and go through the real data pipeline (random flips,
region-only weights in the last epochs, checkpoint writing). The number of epochs is chosen
from a timed probe step so that training fits ``--minutes``.

Held-out images (another seed) are scored before and after, the "after" model being loaded
back from the written checkpoint: MAE, IoU at threshold 0.5, F-beta (beta^2 = 0.3) at 0.5 and
its maximum over 256 thresholds (mean F curve over the images). The all-background
prediction is scored for reference. The script prints the epoch losses and writes JSON.

    python bench/bench_finetune.py [--minutes 3.5] [--resolution 128] [--threads 1]
        [--out bench/results/finetune.json]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import birefnet_core  # noqa: E402
from bench.common import write_json  # noqa: E402
from birefnet_core.training.finetune import FinetuneOptions, finetune  # noqa: E402
from birefnet_core.training.forward import training_forward, training_loss  # noqa: E402
from tests.synthetic import synthetic_float_weights  # noqa: E402

Array = np.ndarray
BACKBONE = "pvt_v2_b0"


# ---------------------------------------------------------------------------- the shapes

def _background(rng: np.random.Generator, size: int) -> Array:
    """(size, size, 3) float texture in [0, 1]: colour waves, stripes or blotchy noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(3)
    if kind == 0:
        field = np.stack([np.sin(2 * np.pi * (rng.uniform(-4, 4) * y + rng.uniform(-4, 4) * x)
                                 + rng.uniform(0, 6.3)) for _ in range(3)], axis=-1)
        image = 0.45 + 0.3 * field
    elif kind == 1:
        period = rng.uniform(0.05, 0.2)
        stripes = (np.floor((x * rng.uniform(-1, 1) + y) / period) % 2)[..., None]
        image = np.where(stripes > 0, rng.uniform(0, 0.7, 3), rng.uniform(0, 0.7, 3))
    else:
        coarse = rng.uniform(0, 0.7, (size // 16 + 1, size // 16 + 1, 3)).astype(np.float32)
        image = np.kron(coarse, np.ones((16, 16, 1), np.float32))[:size, :size]
    noise = 0.06 * rng.standard_normal((size, size, 3))
    return np.clip(image + noise, 0, 1).astype(np.float32)


def _shape_mask(rng: np.random.Generator, size: int) -> Image.Image:
    """An 'L' image with one random disc, ellipse or polygon in white."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    radius = rng.uniform(0.1, 0.3) * size
    kind = rng.integers(3)
    if kind == 0:
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    elif kind == 1:
        ry = radius * rng.uniform(0.4, 1.0)
        draw.ellipse((cx - radius, cy - ry, cx + radius, cy + ry), fill=255)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 8)))
        radii = radius * rng.uniform(0.6, 1.2, angles.size)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)],
                     fill=255)
    return mask


def make_sample(rng: np.random.Generator, size: int) -> tuple[Array, Array]:
    """(size, size, 3) uint8 image and (size, size) uint8 mask in {0, 255}."""
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):
        mask = np.maximum(mask, np.asarray(_shape_mask(rng, size)))
    fill = np.array([rng.uniform(0.75, 1.0), rng.uniform(0.2, 0.7), rng.uniform(0.0, 0.3)])
    fill = fill + 0.08 * rng.standard_normal((size, size, 3))
    inside = (mask > 0)[..., None]
    image = np.where(inside, np.clip(fill, 0, 1), image)
    return (image * 255).round().astype(np.uint8), mask


def write_dataset(folder: Path, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(count):
        image, mask = make_sample(rng, size)
        Image.fromarray(image).save(folder / "images" / f"{i:04d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{i:04d}.png")


def held_out(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, H, W) in [0, 1] and masks (N, 1, H, W) in {0, 1}."""
    rng = np.random.default_rng(seed)
    samples = [make_sample(rng, size) for _ in range(count)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2) / 255.0
    masks = torch.from_numpy(np.stack([s[1] for s in samples]))[:, None] / 255.0
    return images.float(), masks.float()


# --------------------------------------------------------------------------- the metrics

def score(probs: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """MAE, IoU@0.5, F-beta@0.5 and max F-beta (beta^2 = 0.3), means over the images."""
    p, g = probs.flatten(1).double(), masks.flatten(1).double() > 0.5           # (N, HW)
    thresholds = torch.linspace(0, 1, 256, dtype=torch.float64)

    def f_beta(binary: torch.Tensor) -> torch.Tensor:                            # (N, HW) -> (N,)
        tp = (binary & g).sum(1).double()
        precision = tp / binary.sum(1).clamp(min=1)
        recall = tp / g.sum(1).clamp(min=1)
        return (1.3 * precision * recall / (0.3 * precision + recall).clamp(min=1e-12))

    hard = p >= 0.5
    iou = (hard & g).sum(1) / (hard | g).sum(1).clamp(min=1)
    curve = torch.stack([f_beta(p >= t).mean() for t in thresholds])
    return {"mae": (p - g.double()).abs().mean().item(), "iou@0.5": iou.double().mean().item(),
            "fbeta@0.5": f_beta(hard).mean().item(), "max_fbeta": curve.max().item()}


def evaluate(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor,
             resolution: int) -> dict[str, float]:
    probs = torch.cat([birefnet_core.predict(model, images[i:i + 8], resolution=resolution)
                       for i in range(0, len(images), 8)])
    return score(probs, masks)


# ----------------------------------------------------------------------------- the run

def probe_step_seconds(checkpoint: Path, batch: int, size: int) -> float:
    """Median time of a training step (forward, loss, backward) after a warm-up step."""
    model = birefnet_core.load_model(checkpoint, fuse=False).train().requires_grad_(True)
    x, gt = torch.randn(batch, 3, size, size), torch.ones(batch, 1, size, size)
    times = []
    for _ in range(4):
        started = time.perf_counter()
        training_loss(training_forward(model, x, gt), gt).total.backward()
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.5, help="training time budget")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=48)
    parser.add_argument("--test-images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--region-epochs", type=int, default=2)
    parser.add_argument("--task", default="General")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own; 1 on a busy machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "finetune.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size, started = args.resolution, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = work / "init.safetensors"
        save_file({k: v.contiguous() for k, v in synthetic_float_weights(BACKBONE).items()},
                  checkpoint)
        write_dataset(work / "data", args.train_images, size, seed=1)
        images, masks = held_out(args.test_images, size, seed=2)
        before = evaluate(birefnet_core.load_model(checkpoint), images, masks, size)
        step = probe_step_seconds(checkpoint, args.batch_size, size)
        steps_per_epoch = -(-args.train_images // args.batch_size)
        epochs = max(args.region_epochs + 1, int(args.minutes * 60 / (step * steps_per_epoch)))
        print(f"probe step {step:.2f} s; {epochs} epochs of {steps_per_epoch} steps")
        trained_at = time.perf_counter()
        result = finetune(FinetuneOptions(
            data=work / "data", init=str(checkpoint), out=work / "out", epochs=epochs,
            lr=args.lr, batch_size=args.batch_size, resolution=size,
            region_epochs=args.region_epochs, task=args.task, format="safetensors",
            progress=False))
        train_seconds = time.perf_counter() - trained_at
        after = evaluate(birefnet_core.load_model(result.checkpoints[-1]), images, masks, size)
    baseline = score(torch.zeros_like(masks), masks)
    for epoch, loss in enumerate(result.epoch_losses, 1):
        print(f"epoch {epoch:3d}: loss {loss:.4g}")
    for name in before:
        print(f"{name:10s} before {before[name]:.4f}  after {after[name]:.4f}  "
              f"(all-background {baseline[name]:.4f})")
    write_json(args.out, {
        "backbone": BACKBONE, "weights": "synthetic (tests/synthetic.py), no pre-training",
        "resolution": size, "train_images": args.train_images, "test_images": args.test_images,
        "batch_size": args.batch_size, "lr": args.lr, "task": args.task, "epochs": epochs,
        "region_epochs": args.region_epochs, "steps": len(result.step_losses),
        "probe_step_seconds": step, "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started, "threads": torch.get_num_threads(),
        "epoch_losses": result.epoch_losses, "step_losses": result.step_losses,
        "held_out_before": before, "held_out_after": after, "held_out_all_background": baseline,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
