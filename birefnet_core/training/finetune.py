"""Fine-tuning a BiRefNet checkpoint on a folder of image/mask pairs with the paper's objective.

The data folder holds ``images/`` and ``masks/``; files pair up by stem (``images/cat.jpg``
with ``masks/cat.png``). Images are resized to the working resolution and randomly flipped
horizontally. The loss is ``forward.training_loss``: pixel losses on the four decoder stages
plus the gradient-branch BCE; the last M epochs use the region-only weights. AdamW with weight
decay 0.01, as the official training. Checkpoints are plain un-fused state dicts with the
official key names (``epoch_N.pth`` and/or ``epoch_N.safetensors``), which
``birefnet_core.load_model`` and the official code both open. The command line is
``python -m birefnet_core.finetune``.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from ..data.images import images_by_stem, read_image
from ..errors import InputError
from ..inference.predict import working_size
from ..network.model import BiRefNet
from ..weights.hub import resolve_checkpoint
from ..weights.loading import load_model
from .forward import training_forward, training_loss
from .losses import TASK_ALIASES, TASK_LAMBDAS

TASKS = (*TASK_LAMBDAS, *TASK_ALIASES)
FORMATS = ("pth", "safetensors", "both")


# ----------------------------------------------------------------------------- the data

def find_pairs(data_dir: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of ``data_dir/images`` and ``data_dir/masks`` matched by stem,
    sorted; InputError when a folder is missing or empty or the stems do not match."""
    root = Path(data_dir).expanduser()
    folders = {name: root / name for name in ("images", "masks")}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise InputError(f"{root} must contain an {name}/ folder (found none at {folder})")
    files = {name: images_by_stem(folder, name) for name, folder in folders.items()}
    unmatched = {name: sorted(set(by_stem) - set(files["masks" if name == "images" else "images"]))
                 for name, by_stem in files.items()}
    if unmatched["images"] or unmatched["masks"]:
        raise InputError(
            "images and masks must pair up by file name (without extension): "
            + "; ".join(f"{len(stems)} in {name}/ without a partner, e.g. {_first(stems)}"
                        for name, stems in unmatched.items() if stems))
    return [(files["images"][stem], files["masks"][stem]) for stem in sorted(files["images"])]


def _first(stems: list[str], count: int = 5) -> str:
    shown = ", ".join(stems[:count])
    return shown + (", ..." if len(stems) > count else "")


class PairFolder(torch.utils.data.Dataset):
    """Normalised image (3, H, W) and mask (1, H, W) in [0, 1], resized to ``size`` (H, W),
    flipped horizontally at random (p = 0.5) when ``flip``."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: tuple[int, int],
                 mean: Sequence[float], std: Sequence[float], flip: bool = True) -> None:
        self.pairs, self.size, self.flip = pairs, size, flip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, path: Path, mode: str) -> torch.Tensor:
        """(C, H, W) float32 in [0, 1] at the working size."""
        try:
            picture = read_image(path).convert(mode)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        picture = picture.resize(self.size[::-1], Image.BILINEAR)
        pixels = np.asarray(picture, dtype=np.float32) / 255.0
        return torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image = (self._read(image_path, "RGB") - self.mean) / self.std
        mask = self._read(mask_path, "L")
        if self.flip and random.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask


# ------------------------------------------------------------------------ the training

@dataclass
class FinetuneOptions:
    data: Path
    init: str
    out: Path
    epochs: int = 10
    lr: float | None = None            # None: the official rule for the task and batch size
    batch_size: int = 4
    accumulate: int = 1
    resolution: int | tuple[int, int] | None = None   # None: the model's default size
    region_epochs: int = 0
    task: str = "General"
    precision: str = "auto"            # auto (bf16 on CUDA when supported), fp32, bf16
    device: str = "auto"
    freeze_bn: bool = False
    save_every: int = 0                # 0: only after the last epoch
    format: str = "both"
    patch_order: str = "auto"
    workers: int = 0
    seed: int = 7
    progress: bool = True


@dataclass
class FinetuneResult:
    model: BiRefNet                    # the trained model, in eval mode
    checkpoints: list[Path]
    epoch_losses: list[float]          # mean total loss per epoch
    step_losses: list[float] = field(default_factory=list)   # total loss per optimiser step


def official_lr(task: str, batch_size: int) -> float:
    """The official default: 1e-4 for DIS5K (1e-5 otherwise), scaled by sqrt(batch / 4)."""
    return (1e-4 if task == "DIS5K" else 1e-5) * math.sqrt(batch_size / 4)


def _check_options(options: FinetuneOptions) -> None:
    positive = {"epochs": options.epochs, "batch_size": options.batch_size,
                "accumulate": options.accumulate}
    for name, value in positive.items():
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if not 0 <= options.region_epochs <= options.epochs:
        raise InputError(f"region_epochs must lie in [0, epochs = {options.epochs}], got "
                         f"{options.region_epochs}")
    if options.task not in TASKS:
        raise InputError(f"task must be one of {list(TASKS)}, got {options.task!r}")
    if options.format not in FORMATS or options.precision not in ("auto", "fp32", "bf16"):
        raise InputError("format must be pth, safetensors or both; precision auto, fp32 or bf16")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


def _use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def _prepare_model(options: FinetuneOptions, device: torch.device) -> BiRefNet:
    checkpoint = resolve_checkpoint(options.init)
    model = load_model(checkpoint, device=device, fuse=False, patch_order=options.patch_order)
    model.train().requires_grad_(True)
    if options.freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    return model


def save_checkpoint(model: BiRefNet, stem: Path, fmt: str = "both") -> list[Path]:
    """Write the un-fused state dict (official key names, float32 as trained) to
    ``stem.pth`` and/or ``stem.safetensors``; returns the paths written."""
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}
    written = []
    if fmt in ("pth", "both"):
        torch.save(state, stem.with_suffix(".pth"))
        written.append(stem.with_suffix(".pth"))
    if fmt in ("safetensors", "both"):
        save_file(state, str(stem.with_suffix(".safetensors")))
        written.append(stem.with_suffix(".safetensors"))
    return written


def _group_sizes(batches: int, accumulate: int) -> list[int]:
    """For each batch of an epoch, how many batches share its optimiser step (the last group
    may be short), so that every step averages its batches' gradients."""
    return [min(accumulate, batches - (index // accumulate) * accumulate)
            for index in range(batches)]


def _run_epoch(model: BiRefNet, loader: torch.utils.data.DataLoader,
               optimizer: torch.optim.Optimizer, options: FinetuneOptions, epoch: int,
               device: torch.device, bf16: bool) -> tuple[float, list[float]]:
    """One pass over the data; returns the epoch's mean loss and the loss of each step."""
    first_region_epoch = options.epochs - options.region_epochs + 1
    region_only = epoch >= first_region_epoch
    sizes = _group_sizes(len(loader), options.accumulate)
    losses, step_losses, group_loss = [], [], 0.0
    bar = tqdm(loader, desc=f"epoch {epoch}/{options.epochs}", unit="batch", leave=False,
               file=sys.stderr, dynamic_ncols=True, disable=not options.progress)
    optimizer.zero_grad(set_to_none=True)
    for index, (images, masks) in enumerate(bar):
        images, masks = images.to(device), masks.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = training_forward(model, images, masks)
        loss = training_loss(outputs, masks, options.task, region_only=region_only,
                             region_epoch=epoch - first_region_epoch + 1)
        (loss.total / sizes[index]).backward()
        losses.append(loss.parts["total"])
        group_loss += loss.parts["total"] / sizes[index]
        if (index + 1) % options.accumulate == 0 or index + 1 == len(loader):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_losses.append(group_loss)
            group_loss = 0.0
        bar.set_postfix(loss=f"{loss.parts['total']:.4g}", region=region_only)
    bar.close()
    return float(np.mean(losses)), step_losses




def finetune(options: FinetuneOptions) -> FinetuneResult:
    """Train as the options say and write the checkpoints; returns the trained model."""
    _check_options(options)
    pairs = find_pairs(options.data)
    device = _device(options.device)
    random.seed(options.seed)
    torch.manual_seed(options.seed)
    model = _prepare_model(options, device)
    size = working_size(model, options.resolution)
    dataset = PairFolder(pairs, size, model.info.mean, model.info.std)
    loader = torch.utils.data.DataLoader(dataset, batch_size=options.batch_size, shuffle=True,
                                         num_workers=options.workers)
    lr = options.lr if options.lr is not None else official_lr(options.task, options.batch_size * options.accumulate)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=lr, weight_decay=1e-2)
    out = Path(options.out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out}: {exc}") from exc
    bf16 = _use_bf16(options.precision, device)
    result = FinetuneResult(model=model, checkpoints=[], epoch_losses=[])
    log = {"options": {k: str(v) for k, v in asdict(options).items()}, "lr": lr,
           "resolution": list(size), "bf16": bf16, "pairs": len(pairs),
           "patch_order": model.info.patch_order, "epochs": []}
    for epoch in range(1, options.epochs + 1):
        started = time.perf_counter()
        mean_loss, step_losses = _run_epoch(model, loader, optimizer, options, epoch, device,
                                            bf16)
        result.epoch_losses.append(mean_loss)
        result.step_losses.extend(step_losses)
        log["epochs"].append({"epoch": epoch, "loss": mean_loss,
                              "seconds": time.perf_counter() - started})
        if options.progress:
            print(f"epoch {epoch}/{options.epochs}: loss {mean_loss:.5g}", file=sys.stderr)
        last = epoch == options.epochs
        if last or (options.save_every and epoch % options.save_every == 0):
            result.checkpoints += save_checkpoint(model, out / f"epoch_{epoch}", options.format)
        (out / "training_log.json").write_text(json.dumps(log, indent=2))
    model.eval()
    return result
