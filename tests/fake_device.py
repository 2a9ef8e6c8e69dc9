"""A fake ``cuda:0`` for tests on machines without a GPU, and a recorder of every op.

``FakeDevice`` enters PyTorch's ``FakeTensorMode`` (tensors on ``cuda`` are fake: shapes,
dtypes and devices propagate through PyTorch's own fake kernels, no arithmetic runs, an op that
mixes devices raises ``FakeTensorDeviceMismatchError`` and a data-dependent read of a device
tensor raises) together with a ``TorchDispatchMode`` that sees every op first. Host tensors stay
real: an op whose tensors are all on the host runs for real (the host side of the library does
its own arithmetic, as it would beside a GPU); an op that touches a device tensor goes to the
fake kernels. A copy to the host of a device tensor gives a real tensor of placeholder values
(uniform in [0, 1) from a fixed seed: a fake tensor has no values), so host code downstream of
the network runs on something mask-like.

Every op is recorded (``OpRecord``): its name, the phase it ran in (``FakeDevice.phase``; the
network forward is a phase ``"forward"`` when the model is watched by ``watch_forward``), the
devices and dtypes of its tensors and what kind of op it was: a host op, a device op, a copy
between them (``h2d``/``d2h``) or a read of device data on the host (``sync``: ``.item()``,
``bool()``, ``nonzero``, ...). Where the library reads device data outside the network forward
(deciding tiles from a mask, say) the read is recorded and answered with a placeholder, since
fake tensors hold no values: such decisions are not modelled.

What fake tensors cannot model: kernel speed, memory actually allocated by the CUDA caching
allocator, numerical results, ops that only exist in a CUDA build's compiled kernels without a
fake kernel, and stream/asynchronous behaviour (a ``non_blocking`` copy is recorded like any).
"""
from __future__ import annotations

import contextlib
import copy
import traceback
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

DEVICE = torch.device("cuda", 0)

aten = torch.ops.aten
# Ops whose result depends on device values and so must wait for the device.
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
            aten.equal.default, aten.is_nonzero.default, aten.allclose.default,
            aten.unique_consecutive.default, aten._unique2.default, aten.nonzero_static.default,
            aten.repeat_interleave.Tensor}
CPU_ONLY_NAMESPACES = ("mkldnn", "quantized", "onednn")


@dataclass(frozen=True)
class OpRecord:
    name: str                                  # e.g. "aten.mm.default"
    kind: str                                  # host | device | h2d | d2h | sync
    phase: str                                 # innermost phase label ("" outside any)
    phases: tuple[str, ...]                    # every open phase, outermost first
    devices: tuple[str, ...]                   # devices of the tensor arguments
    out_devices: tuple[str, ...]
    out_dtypes: tuple[torch.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]        # of the outputs
    scalar_cpu_inputs: bool                    # a 0-dim host tensor fed a device op
    caller: str = ""                           # for syncs: the library function that read


def _library_caller() -> str:
    """``module:function`` of the innermost birefnet_core or nodes frame on the stack."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace("\\", "/")
        for package in ("/birefnet_core/", "/nodes/"):
            if package in path:
                module = package.strip("/") + "/" + path.split(package, 1)[1]
                return f"{module}:{frame.name}"
    return ""


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _on_device(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor) and t.device.type != "cpu"


def _targets_device(args, kwargs) -> bool:
    for value in tree_leaves((args, kwargs)):
        if isinstance(value, torch.device) and value.type == "cuda":
            return True
    return False


def _swap_or_rebind(swap):
    """``torch.utils.swap_tensors`` as nn.Module.to uses it for fake parameters, which it
    always swaps: nothing to do when a parameter is already where it goes (the same tensor),
    and where the swap is refused (FakeTensorMode keeps weak references to its tensors, which
    swap_tensors will not move) the parameter takes the new fake tensor's storage and device."""
    def swap_tensors(t1: torch.Tensor, t2: torch.Tensor) -> None:
        if t1 is t2:
            return
        try:
            swap(t1, t2)
        except RuntimeError:
            if not (isinstance(t1, FakeTensor) and isinstance(t2, FakeTensor)):
                raise
            t1.data = t2
            t1.fake_device = t2.fake_device
    return swap_tensors


class FakeDevice(TorchDispatchMode):
    """``with FakeDevice() as fake:`` ... ``fake.records``. See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.records: list[OpRecord] = []
        self._phases: list[str] = []
        self._placeholders = torch.Generator().manual_seed(0)
        # the any/all results on the device, for the answers to reads of their values
        self._producers: dict[int, tuple[weakref.ref, object]] = {}
        self._stack = contextlib.ExitStack()

    # -- context -------------------------------------------------------------------------
    def __enter__(self) -> FakeDevice:
        self._stack.enter_context(self.fake_mode)
        swap = torch.utils.swap_tensors
        torch.utils.swap_tensors = _swap_or_rebind(swap)
        self._stack.callback(setattr, torch.utils, "swap_tensors", swap)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._stack.close()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._phases.append(name)
        try:
            yield
        finally:
            self._phases.pop()

    def watch_forward(self, module: nn.Module, name: str = "forward") -> None:
        """Label every op inside ``module``'s forward with the phase ``name``."""
        def enter(*_) -> None:
            self._phases.append(name)

        def leave(*_) -> None:
            self._phases.pop()
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)

    def clear(self) -> None:
        self.records.clear()

    # -- dispatch ------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = _tensors((args, kwargs))
        device_inputs = [t for t in inputs if _on_device(t)]
        if not device_inputs and not _targets_device(args, kwargs):
            with unset_fake_temporarily():
                out = func(*args, **kwargs)
            self._record(func, "host", inputs, out)
            return out
        if func in SYNC_OPS:
            return self._sync(func, args, kwargs, inputs)
        fake_args, fake_kwargs = tree_map(self._as_fake, (args, kwargs))
        out = func(*fake_args, **fake_kwargs)           # the fake kernels (FakeTensorMode)
        kind, out = self._copy_kind(func, args, out)
        self._record(func, kind, inputs, out)
        if func.overloadpacket in (aten.any, aten.all):  # (weak references only to these:
            for tensor in _tensors(out):                  # nn.Module cannot swap a parameter
                self._producers[id(tensor)] = (weakref.ref(tensor), func.overloadpacket)
        return out

    def _as_fake(self, value):
        if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
            return self.fake_mode.from_tensor(value)
        return value

    def _copy_kind(self, func, args, out):
        """("h2d" | "d2h" | "device", result): a copy to the host gives a real tensor of
        placeholder values (written into a real destination for ``copy_``)."""
        if func.overloadpacket in (aten.copy_, aten.copy):
            source, destination = args[1], args[0]
        elif func.overloadpacket in (aten.to, aten._to_copy):
            source, destination = args[0], _tensors(out)[0]
        else:
            return "device", out
        if _on_device(source) and not _on_device(destination):
            if func.overloadpacket is aten.copy_ and not isinstance(destination, FakeTensor):
                with unset_fake_temporarily():
                    destination.copy_(self._placeholder_like(destination))
                return "d2h", destination
            if getattr(source, "_is_param", False) or isinstance(source, nn.Parameter):
                # a module's parameter moved to the host (ComfyUI unloading to the offload
                # device): nn.Module swaps parameter tensors in place, which needs a tensor of
                # the parameter's own class, so it stays a fake tensor (on the host)
                return "d2h", out
            return "d2h", self._placeholder_like(destination)
        if not _on_device(source) and _on_device(destination):
            return "h2d", out
        return "device", out

    def _placeholder_like(self, t: torch.Tensor) -> torch.Tensor:
        with unset_fake_temporarily():
            real = torch.empty(tuple(t.shape), dtype=t.dtype)
            if real.is_floating_point():
                real.copy_(torch.rand(real.shape, generator=self._placeholders))
            else:
                real.zero_()
            return real

    def _sync(self, func, args, kwargs, inputs):
        """A read of device values: recorded; answered with a placeholder (see the module
        docstring): the answer that lets input checks pass for ``bool(t.any())`` (False) and
        ``bool(t.all())`` (True), 1 for other scalars, every index for nonzero."""
        self._record(func, "sync", inputs, None)
        if func is aten._local_scalar_dense.default:
            ref, producer = self._producers.get(id(args[0]), (lambda: None, None))
            producer = producer if ref() is args[0] else None
            if producer in (aten.any, aten.all):
                return producer is aten.all
        with unset_fake_temporarily():
            placeholders = tree_map(
                lambda t: self._placeholder_like(t).fill_(1) if _on_device(t) else t, args)
            out = func(*placeholders, **kwargs)
        if func is aten._local_scalar_dense.default:
            return out
        return tree_map(lambda t: t.to(DEVICE) if isinstance(t, torch.Tensor) else t, out)

    def _record(self, func, kind, inputs, out) -> None:
        if func.namespace == "prim":          # metadata queries (prim.device): no kernel
            return
        outs = _tensors(out)
        device_op = kind != "host"
        self.records.append(OpRecord(
            name=str(func), kind=kind, phase=self._phases[-1] if self._phases else "",
            phases=tuple(self._phases),
            devices=tuple(str(t.device) for t in inputs),
            out_devices=tuple(str(t.device) for t in outs),
            out_dtypes=tuple(t.dtype for t in outs),
            shapes=tuple(tuple(t.shape) for t in outs),
            scalar_cpu_inputs=device_op and any(
                t.device.type == "cpu" and t.dim() == 0 for t in inputs),
            caller=_library_caller() if kind == "sync" else ""))

    # -- queries -------------------------------------------------------------------------
    def of(self, kind: str | None = None, phase: str | None = None) -> list[OpRecord]:
        return [r for r in self.records if (kind is None or r.kind == kind)
                and (phase is None or phase in r.phases)]


def cpu_only_ops(records: list[OpRecord]) -> list[str]:
    """Ops of the CPU-only paths (packed oneDNN linears, int8 kernels) among ``records``."""
    return sorted({r.name for r in records
                   if r.name.split(".")[0] in CPU_ONLY_NAMESPACES})


def mixed_device_ops(records: list[OpRecord]) -> list[OpRecord]:
    """Device ops whose tensors span devices, other than host scalars (0-dim, which CUDA
    kernels accept) and the copies between host and device."""
    found = []
    for r in records:
        if r.kind != "device":
            continue
        devices = {d for d in r.devices + r.out_devices}
        if len(devices) > 1 and not (r.scalar_cpu_inputs and devices - {"cpu"} == {str(DEVICE)}):
            found.append(r)
    return found


def float64_on_device(records: list[OpRecord]) -> list[OpRecord]:
    return [r for r in records if r.kind in ("device", "h2d") and any(
        dtype == torch.float64 and device != "cpu"
        for dtype, device in zip(r.out_dtypes, r.out_devices))]


@lru_cache(maxsize=None)
def _meta_model(backbone: str) -> nn.Module:
    """BiRefNet for ``backbone`` on the meta device, prepared as ``load_model`` prepares it (eval,
    no gradients, BatchNorm folded, channels-last), its keys and shapes checked against the
    parity manifest. No weights are drawn."""
    from birefnet_core.network.folding import fold_batchnorm
    from birefnet_core.network.model import BiRefNet
    from birefnet_core.network.variants import get_variant
    from tests.synthetic import manifest

    with torch.device("meta"):
        model = BiRefNet(get_variant(backbone), "current")
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        expected = {k: spec["shape"] for k, spec in manifest(backbone)["keys"].items()}
        if shapes != expected:
            raise AssertionError(f"{backbone}: the model's keys differ from its manifest")
        model.eval().requires_grad_(False)
        fold_batchnorm(model)
        model.to(memory_format=torch.channels_last)
    return model


def fake_model(backbone: str, dtype: torch.dtype, device: torch.device = DEVICE,
               resolution: int = 1024) -> nn.Module:
    """``_meta_model(backbone)`` copied, cast and moved to the fake device (call inside
    ``FakeDevice``), then given its CPU kernels where it can have them, as ``load_model``
    does, and a ``ModelInfo``."""
    from birefnet_core.network.cpu_kernels import pack_cpu_kernels
    from birefnet_core.weights.loading import ModelInfo

    with unset_fake_temporarily():
        model = copy.deepcopy(_meta_model(backbone))
    model.to(device=device, dtype=dtype)
    packed = pack_cpu_kernels(model)
    if device.type != "cpu" and packed:
        raise AssertionError(f"{packed} modules packed CPU kernels on {device}")
    model.info = ModelInfo(variant=backbone, patch_order="current",
                           resolution=(resolution, resolution), mean=(0.485, 0.456, 0.406),
                           std=(0.229, 0.224, 0.225), source="<fake>")
    return model
