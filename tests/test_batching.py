"""predict_batched: chunking and out-of-memory halving never change the result."""
from __future__ import annotations

import pytest
import torch

import birefnet_core
from birefnet_core.inference.batching import is_out_of_memory, predict_batched
from tests.synthetic import SAME_MASK, synthetic_float_weights


@pytest.fixture(scope="module")
def model():
    return birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), resolution=64)


def _images(count):
    return torch.rand(count, 3, 48, 40, generator=torch.Generator().manual_seed(count))


def test_chunk_size_does_not_change_the_result(model):
    images = _images(5)
    whole = birefnet_core.predict(model, images)
    for batch_size in (1, 2, 5, 8):
        assert torch.allclose(predict_batched(model, images, batch_size=batch_size), whole,
                              atol=SAME_MASK), batch_size


class _RunsOutAboveTwo(torch.nn.Module):
    """Wraps a model; raises the CUDA out-of-memory message for batches larger than two."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.info, self.sizes = inner, inner.info, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_halves_the_chunk_and_gives_the_same_masks(model, caplog):
    images = _images(7)
    wrapped = _RunsOutAboveTwo(model)
    progress = []
    masks = predict_batched(wrapped, images, batch_size=8,
                            progress=lambda done, total: progress.append((done, total)))
    assert torch.allclose(masks, birefnet_core.predict(model, images), atol=SAME_MASK)
    assert wrapped.sizes[:3] == [7, 4, 2]           # 8 -> 4 -> 2, then chunks of two
    assert progress[-1] == (7, 7) and len(progress) == 4
    assert "out of memory" in caplog.text


def test_out_of_memory_at_one_image_is_raised(model):
    class AlwaysOut(_RunsOutAboveTwo):
        def forward(self, x):
            raise RuntimeError("CUDA out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_batched(AlwaysOut(model), _images(2), batch_size=2)


def test_other_errors_are_not_retried(model):
    class Broken(_RunsOutAboveTwo):
        def forward(self, x):
            self.sizes.append(x.shape[0])
            raise RuntimeError("shape mismatch")
    broken = Broken(model)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict_batched(broken, _images(4), batch_size=4)
    assert broken.sizes == [4]


def test_progress_can_stop_between_chunks(model):
    class Stop(Exception):
        pass

    def stop_after_first(done, total):
        if done >= 2:
            raise Stop
    with pytest.raises(Stop):
        predict_batched(model, _images(6), batch_size=2, progress=stop_after_first)


def test_out_of_memory_recognition():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried"))
    assert not is_out_of_memory(RuntimeError("size mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
