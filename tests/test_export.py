"""ONNX export: standard operators, metadata, onnxruntime against PyTorch, the --model path.

Exports take minutes on a small CPU, so each file is exported once per module (PVT-v2-b0,
the smallest variant: one dynamic float32 file, one fixed-size float16 file with the sigmoid
inside) and every test reads those.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import birefnet_core
from birefnet_core import cli
from birefnet_core.errors import BiRefNetError, CheckpointError, InputError
from birefnet_core.export import export_onnx, load_onnx_model
from birefnet_core.export.__main__ import main as export_main
from birefnet_core.export.graph import decode_export_metadata, export_metadata
from birefnet_core.network.backbones import swin
from tests.synthetic import parity_fixture, synthetic_float_weights, synthetic_state_dict

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EPS32, EPS16 = torch.finfo(torch.float32).eps, torch.finfo(torch.float16).eps
# onnxruntime and PyTorch compute the same float32 function with different kernels (GridSample
# vs gathers, MLAS vs oneDNN GEMMs): they differ by their rounding errors only, counted here in
# float32 ulps of the largest logit (eps32 * max|logit|). A float32 forward of this network is
# within about 9 of them of its float64 value (pvt_v2_b0 fixture: 1.45e-6 at max|logit| 1.40,
# against model.double()); onnxruntime and PyTorch were 8 and 23 apart on the two fixtures
# below. 128 leaves 5x for other CPUs' kernels; a dropped bias (1.6e-2 here) or one layer's
# weights rounded to float16 (2.9e-4, which the former 1e-3 let through) is far outside.
FLOAT32_ULPS = 128
# float16 storage moves each layer's output by at most eps16/2 of itself; PyTorch's own float16
# forward of this network is within 0.7-1.1 eps16 * max|logit| of the float32 one with the same
# (rounded) weights, and onnxruntime's float16 graph is the same arithmetic with other kernels.
FLOAT16_ULPS = 4
ROOT = Path(__file__).resolve().parent.parent
FP16_SIZE = 64


def logit_bound(logits: torch.Tensor, ulps: int = FLOAT32_ULPS, eps: float = EPS32) -> float:
    """How far two float32 (or float16) computations of these logits may be apart."""
    return ulps * eps * float(torch.as_tensor(logits).abs().max())


def mask_logits(masks: torch.Tensor) -> torch.Tensor:
    """Masks back to logits (float64: exact for |logit| below ~16 from float32 sigmoids)."""
    return torch.logit(masks.double())


@pytest.fixture(scope="module")
def model():
    return birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), resolution=256)


@pytest.fixture(scope="module")
def dynamic_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "pvt_dynamic.onnx"
    report = export_onnx(model, path, size=(256, 256), dynamic=True)
    assert report.files == (path,) and report.bytes == path.stat().st_size
    return path


@pytest.fixture(scope="module")
def fp16_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "pvt_fp16.onnx"
    export_onnx(model, path, size=(FP16_SIZE, FP16_SIZE), dtype="fp16", sigmoid=True)
    return path


def test_file_passes_the_checker_with_standard_operators_only(dynamic_file):
    onnx.checker.check_model(str(dynamic_file), full_check=True)
    graph = onnx.load(str(dynamic_file)).graph
    ops = {node.op_type for node in graph.node}
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}     # no custom domain
    assert "GridSample" in ops                       # the deformable convolutions
    assert "BatchNormalization" not in ops           # folded into the convolutions
    image = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in image][1] == 3
    assert all(d.dim_param for i, d in enumerate(image) if i != 1)   # batch, H, W free


def test_metadata_says_how_to_feed_the_file(dynamic_file, model):
    meta = {p.key: p.value for p in onnx.load(str(dynamic_file)).metadata_props}
    assert meta["birefnet.variant"] == "pvt_v2_b0"
    assert meta["birefnet.patch_order"] == model.info.patch_order
    assert json.loads(meta["birefnet.mean"]) == list(model.info.mean)
    assert json.loads(meta["birefnet.std"]) == list(model.info.std)
    assert meta["birefnet.output"] == "logits" and meta["birefnet.dynamic_size"] == "true"
    assert meta["birefnet.model"]


@pytest.mark.parametrize("fixture", ["pvt_v2_b0_256x256", "pvt_v2_b0_192x320"])
def test_onnxruntime_equals_torch_at_two_sizes_of_one_file(dynamic_file, model, fixture):
    runtime = load_onnx_model(dynamic_file, device="cpu")
    data = parity_fixture(fixture)
    x = torch.from_numpy(data["input"])
    x = torch.cat((x, x.flip(-1) * 0.5))             # a batch of two different images
    with torch.inference_mode():
        expected = model(x)
    got = runtime(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= logit_bound(expected)
    official = data["logits"]                        # the official model's, also float32
    assert np.abs(got[:1].numpy() - official).max() <= logit_bound(official)


def test_predict_and_the_cli_run_the_file(dynamic_file, model, tmp_path, capsys):
    runtime = cli.open_model(str(dynamic_file), device="cpu")
    assert runtime.info.resolution == (256, 256)
    images = torch.rand(2, 3, 150, 230, generator=torch.Generator().manual_seed(0))
    # Masks are sigmoids of logits within logit_bound; sigmoid's slope is at most 1/4 and the
    # shared pre- and post-processing is the same code on the same inputs.
    expected = birefnet_core.predict(model, images, resolution=(192, 320))
    got = birefnet_core.predict(runtime, images, resolution=(192, 320))
    assert (got - expected).abs().max() <= logit_bound(mask_logits(expected)) / 4
    photo = tmp_path / "photo.png"
    Image.fromarray((images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(photo)
    assert cli.main([str(photo), "-o", str(tmp_path / "out"), "--model", str(dynamic_file),
                     "--device", "cpu"]) == 0
    assert "ONNX" in capsys.readouterr().err
    with Image.open(tmp_path / "out" / "photo_mask.png") as written:
        mask = np.asarray(written, dtype=np.float32) / 255
    reference = cli.compute_mask(model, Image.open(photo).convert("RGB"), None)
    # 8-bit masks of the same soft mask: at most one grey level apart where rounding differs.
    assert np.abs(mask - np.asarray(reference, dtype=np.float32) / 255).max() <= 1 / 255 + 1e-6


def test_options_baked_into_the_file_cannot_be_changed(dynamic_file):
    with pytest.raises(cli.UsageError, match="dtype"):
        cli.open_model(str(dynamic_file), device="cpu", dtype="bf16")
    with pytest.raises(cli.UsageError, match="patch order"):
        cli.open_model(str(dynamic_file), device="cpu", patch_order="legacy")


def test_float16_file_with_sigmoid_inside(fp16_file, model):
    runtime = load_onnx_model(fp16_file, device="cpu")
    assert runtime.export["output"] == "mask" and runtime.info.resolution == (FP16_SIZE,) * 2
    images = torch.rand(3, 3, 90, 70, generator=torch.Generator().manual_seed(1))
    rounded = copy.deepcopy(model).half().float()    # the file's weights, computed in float32
    mean, std = (torch.tensor(v)[:, None, None] for v in (model.info.mean, model.info.std))
    x = (torch.rand(3, 3, FP16_SIZE, FP16_SIZE, generator=torch.Generator().manual_seed(1))
         - mean) / std                               # what the file takes: normalised images
    with torch.inference_mode():
        reference = rounded(x)
    got = runtime(x)             # logits again: the runtime inverts the float32 sigmoid
    assert (got - reference).abs().max() <= logit_bound(reference, FLOAT16_ULPS, EPS16)
    masks = birefnet_core.predict(runtime, images)   # predict feeds it like the float32 model
    expected = birefnet_core.predict(rounded, images, resolution=FP16_SIZE)
    assert (masks - expected).abs().max() <= \
        logit_bound(mask_logits(expected), FLOAT16_ULPS, EPS16) / 4
    with pytest.raises(InputError, match="--dynamic"):
        birefnet_core.predict(runtime, images, resolution=128)


def test_swin_backbone_is_traced_in_its_window_form_with_plain_layers(monkeypatch):
    """What torch.export (the ONNX exporter's tracer) makes of a loaded Swin backbone, at sizes
    that need padding (stage maps 56x40, 28x20, 14x10, 7x5 against windows of 7) and a batch
    of two: the stages never gather windows while traced (window_chunks, spied on, is not
    called), the graph holds no packed oneDNN kernel (a file cannot hold its weights), and the
    traced program computes what the eager backbone computes."""
    model = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    x = torch.randn(2, 3, 224, 160, generator=torch.Generator().manual_seed(2))
    calls = []
    gather = swin.window_chunks
    monkeypatch.setattr(swin, "window_chunks", lambda *a, **k: calls.append(1) or gather(*a, **k))
    with torch.inference_mode():
        eager = model.bb(x)
    assert calls                                     # eager stages gather their windows
    calls.clear()
    with torch.no_grad():
        program = torch.export.export(model.bb, (x,))
    assert calls == []                               # the traced stages do not
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("mkldnn" in op for op in ops) and "aten.linear.default" in ops
    with torch.no_grad():
        traced = program.module()(x)
    for a, b in zip(eager, traced, strict=True):     # float32 in other orders: reassociation
        assert (a - b).abs().max() <= logit_bound(a)
    assert "forward" not in vars(model.bb.layers[0])      # nothing patched onto the stages


def test_missing_onnxruntime_is_a_clear_error(dynamic_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BiRefNetError, match="pip install onnxruntime"):
        load_onnx_model(dynamic_file)


def test_a_file_without_birefnet_metadata_is_refused(tmp_path):
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])], "plain",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, 32, 32])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(CheckpointError, match="birefnet_core.export"):
        load_onnx_model(path)


@pytest.mark.parametrize("key, value", [("mean", "0.5"), ("std", '{"r": 1}'),
                                        ("resolution", "[256]"), ("size", "not json"),
                                        ("mean", '[0.5, "0.4", 0.3]')])
def test_malformed_list_metadata_is_a_checkpoint_error(model, key, value):
    written = export_metadata(model, dtype="fp32", dynamic=True, size=(256, 256),
                              sigmoid=False, opset=18)
    decoded = decode_export_metadata(written, "m.onnx")
    assert decoded["mean"] == tuple(model.info.mean) and decoded["size"] == (256, 256)
    assert decoded["dynamic_size"] is True and decoded["variant"] == "pvt_v2_b0"
    with pytest.raises(CheckpointError, match=f"m.onnx: its metadata birefnet.{key} must be a "
                                              "list of [23] numbers.*birefnet_core.export"):
        decode_export_metadata({**written, f"birefnet.{key}": value}, "m.onnx")


def test_export_command_refuses_bad_options_and_leaves_nothing(tmp_path, capsys):
    from safetensors.torch import save_file
    checkpoint = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in synthetic_state_dict("pvt_v2_b0").items()},
              str(checkpoint))
    assert export_main([str(checkpoint), "-o", str(tmp_path / "m.txt")]) == 2
    assert export_main([str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--opset", "13"]) == 2
    assert "opset 13" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]


def _run_gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)


def test_gpu_check_runs_every_step_in_its_cpu_smoke_mode(dynamic_file, model, tmp_path):
    out = tmp_path / "smoke.json"
    result = _run_gpu_check("--cpu-smoke", "--onnx", str(dynamic_file), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    steps = json.loads(out.read_text())["steps"]
    assert list(steps) == ["parity", "precision", "speed", "memory", "video", "detail", "onnx",
                           "compile"]
    assert all(row["max_abs_dlogit_vs_cpu"] == 0 for row in steps["parity"]["result"])
    assert len(steps["speed"]["result"]) == len(steps["compile"]["result"]) == 4
    onnx_step = steps["onnx"]["result"]
    x = torch.rand(1, 3, onnx_step["size"], onnx_step["size"],   # the script's input
                   generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        scale = model(x)
    assert onnx_step["max_abs_dlogit_vs_torch_fp32"] <= logit_bound(scale)


def test_gpu_check_without_cuda_stops_with_a_clear_message(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run its full check")
    result = _run_gpu_check("--out", str(tmp_path / "x.json"))
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and "--cpu-smoke" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_int8_and_compiled_models_are_refused_with_the_fix(tmp_path):
    weights = synthetic_float_weights("pvt_v2_b0")
    for options in ({"dtype": "int8"}, {"compile": True}):
        model = birefnet_core.load_model(weights, **options)
        with pytest.raises(BiRefNetError, match="without int8 and without compile"):
            export_onnx(model, tmp_path / "m.onnx", size=(64, 64))
    assert list(tmp_path.iterdir()) == []


class _TwoPassSwin(torch.nn.Module):
    """A tiny Swin run as BiRefNet runs its backbone: on the image and on its half."""

    def __init__(self) -> None:
        super().__init__()
        from birefnet_core.network.backbones.swin import SwinTransformer
        from birefnet_core.network.variants import SwinConfig
        self.bb = SwinTransformer(SwinConfig(8, (2, 2, 2, 2), (1, 1, 2, 2), 7)).eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        half = torch.nn.functional.interpolate(image, scale_factor=0.5, mode="bilinear")
        features = self.bb(image) + self.bb(half)
        return torch.cat([f.flatten(1) for f in features], dim=1)


def test_dynamic_swin_graphs_are_traced_where_no_stage_has_a_single_window(tmp_path):
    """Traced at 256x256 the deepest half-size stage has one window, and the exporter fixed
    that dimension to 1: the file failed at 512x512 and above (onnxruntime: 'broadcast 4 by
    16'). trace_size moves the trace to where every stage has several windows; the file then
    runs at sizes with one and with many windows."""
    from birefnet_core.export.graph import _dynamic_shapes, trace_size
    swin_t = birefnet_core.load_model(synthetic_float_weights("swin_v1_t"))
    swin_l = birefnet_core.load_model(synthetic_float_weights("swin_v1_l"))
    assert trace_size(swin_t, (256, 256), dynamic=True) == (512, 512)
    assert trace_size(swin_l, (256, 256), dynamic=True) == (832, 832)
    assert trace_size(swin_t, (256, 256), dynamic=False) == (256, 256)
    for model, traced in ((swin_t, 512), (swin_l, 832)):     # two windows a side at H/64
        window = model.variant.backbone.window_size
        assert -(-(traced // 64) // window) >= 2
    module = _TwoPassSwin().eval()
    path = tmp_path / "two_pass.onnx"
    example = torch.rand(2, 3, *trace_size(swin_t, (256, 256), dynamic=True))
    with torch.no_grad():                       # the stages trace their padded form themselves
        torch.onnx.export(module, (example,), None, dynamo=True, input_names=["image"],
                          dynamic_shapes=_dynamic_shapes(True)).save(path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in ((256, 256), (512, 512), (256, 512), (1024, 1024)):
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            expected = module(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        # LayerNorm-ed features of order 1 through a few float32 layers computed by other
        # kernels: reassociation only (~1e-6); a wrong window layout is off by order 1.
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), size
