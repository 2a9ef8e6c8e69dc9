"""The CPU probe (birefnet_core/network/cpu_features.py) and what follows from it: dtype auto in
the CLI and the Loader, the advice for .onnx files, Swin's row chunk. The probe's inputs (the
instruction flags, the measured bf16/fp32 rate, the cache sizes) are injected, so every test
holds on any CPU: the AMD EPYC with native bfloat16 and the Intel Xeon that lists AVX512_BF16
but runs it at half float32's rate are both written out here."""
from __future__ import annotations

import os

import pytest
import torch

from birefnet_core import cli
from birefnet_core.export import runtime
from birefnet_core.network import cpu_features
from birefnet_core.network.backbones import swin
from birefnet_core.network.cpu_features import Bfloat16Support

EPYC = {"avx512_bf16": True, "amx_bf16": False, "l2_cache_size": 1 << 20}      # Zen 4
XEON = {"avx512_bf16": True, "amx_bf16": False, "l2_cache_size": 2 << 20}      # family 6/207
SAPPHIRE = {"avx512_bf16": True, "amx_bf16": True}
AVX2_ONLY = {"avx2": True, "avx512_bf16": False}
NATIVE = Bfloat16Support(True, "AVX512_BF16", 2.3)
NOT_NATIVE = Bfloat16Support(False, "AVX512_BF16", 0.66)


def _never_measured() -> float:
    raise AssertionError("the timing probe ran where the flags already answered")


@pytest.mark.parametrize("capabilities, machine, mkldnn, expected", [
    (SAPPHIRE, "x86_64", True, "AMX-BF16"),
    (EPYC, "AMD64", True, "AVX512_BF16"),
    (AVX2_ONLY, "x86_64", True, None),                 # oneDNN emulates: not an instruction
    ({"bf16": True}, "aarch64", False, "Arm BF16"),
    ({}, "arm64", True, "Arm BF16"),                    # Arm: PyTorch's own check
    ({}, "arm64", False, None),
])
def test_instruction_flags_shortlist(capabilities, machine, mkldnn, expected):
    assert cpu_features.bf16_instructions(capabilities, machine, mkldnn) == expected


def test_flags_alone_do_not_make_bfloat16_native():
    """The Xeon lists AVX512_BF16 yet ran a bfloat16 product at 0.66x float32's rate: not
    native (a flags-only probe said native, and auto would have run 4x slower)."""
    xeon = cpu_features.judge_bf16("AVX512_BF16", None, lambda: 0.66)
    epyc = cpu_features.judge_bf16("AVX512_BF16", None, lambda: 2.3)
    assert not xeon.native and xeon.reason == "this CPU has no native bfloat16"
    assert "0.66x" in xeon.evidence and "AVX512_BF16" in xeon.evidence
    assert epyc.native and epyc.reason == "this CPU runs bfloat16 natively"
    threshold = cpu_features.MIN_BF16_SPEEDUP
    assert cpu_features.judge_bf16("AVX512_BF16", None, lambda: threshold).native
    assert not cpu_features.judge_bf16("AVX512_BF16", None, lambda: threshold * 0.99).native


def test_no_instructions_means_no_probe_and_the_switch_overrides():
    assert not cpu_features.judge_bf16(None, None, _never_measured).native
    assert cpu_features.judge_bf16("AVX512_BF16", "1", _never_measured).native
    assert not cpu_features.judge_bf16("AMX-BF16", " 0", _never_measured).native
    assert not cpu_features.judge_bf16(None, "yes", _never_measured).native   # not 0/1: ignored


def test_speedup_is_a_median_of_interleaved_pairs():
    """One pair hit by other load (its bfloat16 half 10x slower) does not move the answer."""
    seconds = {torch.float32: iter([9.0, 9.0] + [1.0] * 7), torch.bfloat16:
               iter([9.0] + [0.5, 0.5, 5.0, 0.5, 0.5, 0.5, 0.5])}
    order = []

    def timer(dtype):
        order.append(dtype)
        return next(seconds[dtype])
    assert cpu_features.bf16_speedup(timer, pairs=7) == pytest.approx(2.0)
    assert order[2:] == [torch.float32, torch.bfloat16] * 7            # taking turns


def test_the_real_probe_answers_once_per_process():
    threads = torch.get_num_threads()
    cpu_features.cpu_bf16.cache_clear()
    first = cpu_features.cpu_bf16()
    assert cpu_features.cpu_bf16() is first
    assert torch.get_num_threads() == threads                  # the probe's one thread undone
    if os.environ.get(cpu_features.ENVIRONMENT_SWITCH) is None:
        measured = first.speedup is not None and first.speedup >= cpu_features.MIN_BF16_SPEEDUP
        assert first.native == (first.instructions is not None and measured)


@pytest.mark.parametrize("support, dtype, why", [
    (NATIVE, torch.bfloat16, "bf16: this CPU runs bfloat16 natively"),
    (NOT_NATIVE, torch.float32, "fp32: this CPU has no native bfloat16"),
])
def test_dtype_auto_follows_the_cpu(monkeypatch, support, dtype, why):
    monkeypatch.setattr(cpu_features, "cpu_bf16", lambda: support)
    assert cpu_features.auto_dtype(torch.device("cpu")) == (dtype, why)
    assert cli.choose_dtype("auto", torch.device("cpu")) == dtype
    assert cli.choose_dtype("fp32", torch.device("cpu")) == torch.float32
    assert cpu_features.auto_dtype(torch.device("cuda"))[0] == torch.float16
    assert cpu_features.auto_dtype(torch.device("mps"))[0] == torch.float32


def test_onnx_advice_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(cpu_features, "cpu_bf16", lambda: NOT_NATIVE)
    slow = runtime.cpu_advice()
    assert "int8" in slow and "no native bfloat16" in slow and "--dtype bf16" not in slow
    monkeypatch.setattr(cpu_features, "cpu_bf16", lambda: NATIVE)
    assert "--dtype bf16" in runtime.cpu_advice()


@pytest.mark.parametrize("capabilities, fallbacks, expected", [
    (XEON, (), (2 << 20, "cpuinfo")),
    ({"l2_cache_size": 0}, (lambda: None, lambda: 512 << 10), (512 << 10, "lambda>")),
    ({}, (lambda: None,), (cpu_features.DEFAULT_L2_BYTES, "default")),
])
def test_cache_sizes_fall_back_in_order(capabilities, fallbacks, expected):
    found = cpu_features.read_cache_sizes(capabilities, fallbacks)
    assert found.l2_bytes == expected[0] and found.source.endswith(expected[1])


def test_linux_sysfs_reader(tmp_path):
    for index, (level, size) in enumerate((("1", "48K"), ("1", "32K"), ("2", "2048K"),
                                           ("3", "260M"))):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(level + "\n")
        (folder / "size").write_text(size + "\n")
    assert cpu_features._sysfs_l2(tmp_path) == 2 << 20
    assert cpu_features._sysfs_l2(tmp_path / "absent") is None


@pytest.mark.parametrize("l2, threads, rows", [
    (1 << 20, 2, 4096),            # Zen 4, 2 threads: the size tuned there
    (2 << 20, 2, 8192),            # the Xeon (2 MiB per core), 2 threads
    (2 << 20, 1, 4096),
    (256 << 10, 1, 2048),          # a small L2: the floor
    (2 << 20, 64, 32768),          # many threads: the ceiling
    (3 << 20, 2, 8192),            # rounded down to a power of two
])
def test_row_chunk_follows_cache_and_threads(l2, threads, rows):
    assert cpu_features.chunk_rows_for(l2, threads) == rows


def test_swin_uses_the_derived_chunk_on_the_cpu_only(monkeypatch):
    monkeypatch.setattr(cpu_features, "cache_sizes",
                        lambda: cpu_features.CacheSizes(2 << 20, "test"))
    monkeypatch.setattr(swin, "CPU_CHUNK_ROWS", None)
    threads = torch.get_num_threads()
    assert swin.chunk_rows(torch.device("cpu")) == cpu_features.chunk_rows_for(2 << 20, threads)
    assert swin.chunk_rows(torch.device("cuda")) is None
    monkeypatch.setattr(swin, "CPU_CHUNK_ROWS", 0)
    assert swin.chunk_rows(torch.device("cpu")) is None
    monkeypatch.setattr(swin, "CPU_CHUNK_ROWS", 1024)
    assert swin.chunk_rows(torch.device("cpu")) == 1024


@pytest.mark.parametrize("support, dtype, why", [
    (NATIVE, torch.bfloat16, "bf16: this CPU runs bfloat16 natively"),
    (NOT_NATIVE, torch.float32, "fp32: this CPU has no native bfloat16"),
])
def test_loader_info_says_what_dtype_auto_chose(tmp_path, monkeypatch, support, dtype, why):
    from safetensors.torch import save_file

    from tests.comfyui_inprocess import import_pack
    from tests.synthetic import synthetic_float_weights
    pack = import_pack()
    import folder_paths
    weights = {k: v.contiguous() for k, v in synthetic_float_weights("pvt_v2_b0").items()}
    save_file(weights, tmp_path / "synthetic.safetensors")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "birefnet",
                        ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(pack.birefnet_core.network.cpu_features, "cpu_bf16", lambda: support)
    patcher, info = pack.nodes.BiRefNetLoader().load(
        "synthetic.safetensors", device="cpu", dtype="auto", patch_order="auto",
        input_normalization="auto")
    assert next(patcher.model.parameters()).dtype == dtype
    assert f"(dtype auto, {why})" in info
    _, fixed = pack.nodes.BiRefNetLoader().load(
        "synthetic.safetensors", device="cpu", dtype="fp32", patch_order="auto",
        input_normalization="auto")
    assert "dtype auto" not in fixed
