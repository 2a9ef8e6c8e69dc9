"""Peak activation memory of one network forward, per backbone, dtype and size: the numbers
behind birefnet_core/inference/memory.py. Results to bench/results/memory.json.

    python bench/bench_memory.py fake            # fake cuda:0, live tensor bytes (seconds each)
    python bench/bench_memory.py cpu             # the CPU, peak RSS over the weights (slow)
    python bench/bench_memory.py cpu --only swin_v1_t:float32:1024

fake: the model is moved to a fake ``cuda:0`` under FakeTensorMode (no arithmetic, no GPU);
a TorchDispatchMode counts the bytes of every storage an op creates on the device until the
last tensor holding it dies (weakref finalizers), so its peak is what a caching allocator
must hold at once for the forward's activations (weights excluded: they exist before it).
A real CUDA allocator rounds blocks up (to 512 bytes, 2 MiB segments) and keeps freed blocks
cached, and cuDNN/cuBLAS workspaces are not tensors: a GPU run can only be higher.

cpu: one forward in a fresh process per measurement; the peak resident set (VmHWM, reset
after the model is built through /proc/self/clear_refs) minus the resident set before the
forward. The CPU path runs Swin's attention in row chunks, so its peak is not the GPU's.

Weights are synthetic (tests/synthetic.py, from the parity manifests): memory does not depend
on their values. Linux only (VmHWM); the runtime formula itself has no such dependency.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS  # noqa: E402

OUT = RESULTS / "memory.json"
BACKBONES = ("swin_v1_t", "swin_v1_l", "pvt_v2_b0", "pvt_v2_b2")
DTYPES = ("float32", "float16", "bfloat16")
SIDES = (1024, 2048)
MIB = 2 ** 20


class LiveDeviceBytes:
    """A TorchDispatchMode (made lazily: torch's dispatch modes are imported on use) counting
    the bytes of live storages on non-CPU devices, and their peak."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        class _Mode(TorchDispatchMode):
            def __init__(self) -> None:
                super().__init__()
                self.live: dict[int, list[int]] = {}    # storage -> [bytes, tensors alive]
                self.bytes = self.peak = 0

            def _release(self, key: int) -> None:
                entry = self.live.get(key)
                if entry is None:
                    return
                entry[1] -= 1
                if entry[1] == 0:
                    self.bytes -= entry[0]
                    del self.live[key]

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for tensor in tree_flatten(out)[0]:
                    if isinstance(tensor, torch.Tensor) and tensor.device.type != "cpu":
                        storage = tensor.untyped_storage()
                        key = storage._cdata
                        if key in self.live:
                            self.live[key][1] += 1
                        else:
                            self.live[key] = [storage.nbytes(), 1]
                            self.bytes += storage.nbytes()
                            self.peak = max(self.peak, self.bytes)
                        weakref.finalize(tensor, self._release, key)
                return out
        return _Mode()


def _model(backbone: str, dtype: str):
    from birefnet_core import load_model
    from tests.synthetic import synthetic_float_weights
    return load_model(synthetic_float_weights(backbone), dtype=getattr(torch, dtype))


def _host_built_swin_chunks(mode) -> None:
    """Swin's per-size tables are made on the host with ``nonzero``, which fake tensors cannot
    run: build them outside the fake mode and hand the forward fake copies on its device."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from birefnet_core.network.backbones import swin
    original = swin.window_chunks

    def fake_chunks(height, width, window, shift, device, *rest):
        with unset_fake_temporarily():
            chunks = original(height, width, window, shift, torch.device("cpu"), *rest)
        return tuple(type(chunk)(*(None if t is None else mode.from_tensor(t).to(device)
                                   for t in chunk.tensors())) for chunk in chunks)
    swin.window_chunks = fake_chunks


def fake_worker(backbone: str, dtype: str, side: int, batch: int) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode
    model = _model(backbone, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    start = time.perf_counter()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        if backbone.startswith("swin"):
            _host_built_swin_chunks(mode)
        model = model.to("cuda")
        images = torch.empty(batch, 3, side, side, device="cuda", dtype=getattr(torch, dtype))
        with torch.inference_mode(), LiveDeviceBytes() as live:
            logits = model(images)
            del logits
    return {"peak_bytes": live.peak, "weights_bytes": weights,
            "seconds": time.perf_counter() - start}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def cpu_worker(backbone: str, dtype: str, side: int, batch: int) -> dict:
    model = _model(backbone, dtype)
    images = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    images = images.to(getattr(torch, dtype))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")          # VmHWM := VmRSS
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        model(images)
    seconds = time.perf_counter() - start
    return {"peak_bytes": (_rss_kib("VmHWM") - before) * 1024, "seconds": seconds,
            "rss_before_mib": before / 1024}


def _run(kind: str, backbone: str, dtype: str, side: int, batch: int, timeout: float) -> dict:
    args = [sys.executable, __file__, "_worker", kind, backbone, dtype, str(side), str(batch)]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        return {"failed": done.returncode, "stderr_tail": done.stderr[-600:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(kind: str, cases: list[tuple[str, str, int, int]], timeout: float) -> dict:
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    rows = dict(old.get(kind, {}))
    for backbone, dtype, side, batch in cases:
        key = f"{backbone}:{dtype}:{side}:{batch}"
        row = _run(kind, backbone, dtype, side, batch, timeout)
        rows[key] = row
        peak = row.get("peak_bytes")
        text = f"{peak / MIB:9.1f} MiB" if peak is not None else f"failed ({row['failed']})"
        extra = f"  {peak / (side * side * batch):6.1f} B/pixel" if peak is not None else ""
        print(f"{kind} {key:32s} {text}{extra}", flush=True)
        _save(kind, rows)
    return rows


def _save(kind: str, rows: dict) -> None:
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results[kind] = rows
    results["notes"] = {
        "fake": "live tensor bytes on a fake cuda:0 (FakeTensorMode), network forward only, "
                "inference mode; excludes weights, allocator rounding/caching, library "
                "workspaces",
        "cpu": "peak RSS (VmHWM) minus RSS before the forward, one fresh process each; the CPU "
               "path (row chunks, oneDNN) differs from the GPU's; 2 shared cores",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")


def _cases(only: list[str] | None, kind: str) -> list[tuple[str, str, int, int]]:
    if only:
        cases = []
        for spec in only:
            parts = spec.split(":")
            backbone, dtype, side = parts[0], parts[1], int(parts[2])
            cases.append((backbone, dtype, side, int(parts[3]) if len(parts) > 3 else 1))
        return cases
    cases = [(b, d, s, 1) for b in BACKBONES for d in DTYPES for s in SIDES]
    if kind == "fake":      # batch 2 shows what an extra image adds
        cases += [(b, "float16", 1024, 2) for b in BACKBONES]
    return cases


def main(argv=None) -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        kind, backbone, dtype, side, batch = sys.argv[2:7]
        worker = fake_worker if kind == "fake" else cpu_worker
        torch.set_grad_enabled(False)
        print(json.dumps(worker(backbone, dtype, int(side), int(batch))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["fake", "cpu"])
    parser.add_argument("--only", nargs="*", help="backbone:dtype:side[:batch] to measure")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    args = parser.parse_args(argv)
    measure(args.kind, _cases(args.only, args.kind), args.timeout)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
