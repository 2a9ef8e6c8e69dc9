"""Ops dispatched per forward on a fake ``cuda:0`` (a proxy for GPU kernel launches), ours
beside the official BiRefNet code, at 1024² and 2048² in float16, batch 1.

Both models run on PyTorch's fake tensors (tests/fake_device.py): no GPU and no arithmetic, so
this counts what a GPU would be asked to launch, not how long it takes. Every ATen op that
touches a device tensor counts once (views and reshapes too: they launch nothing on a GPU, so
the counts are an upper bound on launches for both sides alike; metadata queries such as
``prim.device`` are not counted). Ours is counted twice: with
the deformable convolution's blocks sized for the device (``block_rows``, what runs) and with
the CPU's cache-sized blocks forced (what ran on a GPU before), to show what the block size
does. The official model is built by its own code from a checkout on the meta device (no
weights drawn); its deformable convolution is torchvision's ``deform_conv2d``, which has a fake
kernel, so its decoder is counted whole.

    python bench/bench_dispatch.py --official /tmp/official-birefnet [--variants swin_v1_l]
        [--sizes 1024 2048] [--out bench/results/dispatch.json]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import RESULTS, official_birefnet_class, write_json  # noqa: E402
from birefnet_core.network import deform_conv  # noqa: E402
from tests.fake_device import DEVICE, FakeDevice, fake_model  # noqa: E402

DTYPE = torch.float16


def _count(fake: FakeDevice, forward) -> dict:
    """Device ops of one steady forward (after a first one has built any per-size tables)."""
    with torch.inference_mode():
        forward()
        fake.clear()
        start = time.perf_counter()
        forward()
    kinds = Counter(r.kind for r in fake.records)
    return {"device_ops": kinds["device"],
            "decoder_ops": sum(r.kind == "device" and "decoder" in r.phases
                               for r in fake.records),
            "deform_ops": sum(r.kind == "device" and "deform" in r.phases
                              for r in fake.records),
            "host_ops": kinds["host"], "copies": kinds["h2d"] + kinds["d2h"],
            "syncs": kinds["sync"], "fake_seconds": round(time.perf_counter() - start, 1)}


def _watch(fake: FakeDevice, model: torch.nn.Module, deform_type: type) -> None:
    fake.watch_forward(model.decoder, "decoder")
    for module in model.modules():
        if isinstance(module, deform_type):
            fake.watch_forward(module, "deform")


def count_ours(variant: str, size: int, cpu_blocks: bool) -> dict:
    original = deform_conv.block_rows
    if cpu_blocks:                        # the CPU's rule on every device: what ran before
        deform_conv.block_rows = lambda device, *rest: original(torch.device("cpu"), *rest)
    try:
        with FakeDevice() as fake:
            model = fake_model(variant, DTYPE, resolution=size)
            _watch(fake, model, deform_conv.DeformableConv2d)
            x = torch.zeros(1, 3, size, size).to(DEVICE, DTYPE)
            return _count(fake, lambda: model(x))
    finally:
        deform_conv.block_rows = original


def _official_meta_model(checkout: Path, variant: str) -> torch.nn.Module:
    """The official BiRefNet for ``variant`` built by its own code on the meta device."""
    with torch.device("meta"):
        return official_birefnet_class(checkout, variant)(bb_pretrained=False).eval()


def count_official(checkout: Path, variant: str, size: int) -> dict:
    model = _official_meta_model(checkout, variant).requires_grad_(False)
    from models.modules.deform_conv import DeformableConv2d as OfficialDeformable
    with FakeDevice() as fake:
        model.to(DEVICE, DTYPE)
        _watch(fake, model, OfficialDeformable)
        x = torch.zeros(1, 3, size, size).to(DEVICE, DTYPE)
        return _count(fake, lambda: model(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="a checkout of the official code")
    parser.add_argument("--variants", nargs="+", default=["swin_v1_l"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--out", type=Path, default=RESULTS / "dispatch.json")
    args = parser.parse_args()
    rows = []
    for variant in args.variants:
        for size in args.sizes:
            runs = {"ours": count_ours(variant, size, cpu_blocks=False),
                    "ours_cpu_blocks": count_ours(variant, size, cpu_blocks=True)}
            if args.official is not None:
                runs["official"] = count_official(args.official, variant, size)
            for side, counts in runs.items():
                row = {"variant": variant, "size": size, "dtype": "fp16", "side": side, **counts}
                rows.append(row)
                print(f"{variant} {size}² {side:16s} device ops {counts['device_ops']:6d}  "
                      f"decoder {counts['decoder_ops']:6d}  deformable {counts['deform_ops']:6d}  "
                      f"host ops {counts['host_ops']}  copies {counts['copies']}  "
                      f"syncs {counts['syncs']}", flush=True)
    write_json(args.out, {"device": "fake cuda:0 (torch FakeTensorMode)",
                          "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
