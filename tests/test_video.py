"""birefnet_core.matte_video / stream_mattes and the temporal stabiliser."""
from __future__ import annotations

import weakref

import pytest
import torch

import birefnet_core
from bench.video_clips import edge_lag, make_clip, simulated_masks, static_flicker
from birefnet_core.errors import InputError
from birefnet_core.inference.temporal import STABILIZE_METHODS, TemporalStabilizer
from tests.synthetic import SAME_MASK, synthetic_float_weights
from tests.test_batching import _RunsOutAboveTwo


@pytest.fixture(scope="module")
def model():
    return birefnet_core.load_model(synthetic_float_weights("pvt_v2_b0"), resolution=64)


def _frames(count=7, height=48, width=40, seed=0):
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _stabilized(clip, masks, strength, method):
    stabilizer, out = TemporalStabilizer(strength, method), []
    for frame, mask in zip(clip.frames, masks):
        out += [m for _, m in stabilizer.push(frame, mask)]
    out += [m for _, m in stabilizer.flush()]
    return torch.stack(out)


# --------------------------------------------------------------------------- matte_video

@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_stabilize_off_is_exactly_the_per_frame_result(model, batch_size):
    frames = _frames()
    expected = birefnet_core.predict_batched(model, frames, batch_size=batch_size)
    assert torch.equal(birefnet_core.matte_video(model, frames, batch_size=batch_size), expected)
    from_generator = birefnet_core.matte_video(model, (f for f in frames), batch_size=batch_size)
    assert torch.equal(from_generator, expected)
    # chunks vs one batch: float32 reordering only (tests/synthetic.py, SAME_MASK)
    assert torch.allclose(expected, birefnet_core.predict(model, frames), atol=SAME_MASK)


@pytest.mark.parametrize("method", STABILIZE_METHODS)
def test_stream_yields_every_frame_in_order(model, method):
    frames = _frames(count=9)
    pairs = list(birefnet_core.stream_mattes(model, frames, batch_size=4, stabilize=0.8,
                                             method=method))
    assert len(pairs) == 9
    for (frame, mask), original in zip(pairs, frames):
        assert torch.equal(frame, original) and mask.shape == (1, 48, 40)
        assert mask.min() >= 0 and mask.max() <= 1


def test_frames_from_a_generator_are_not_all_held(model):
    alive, most = [0], [0]

    def forget(_):
        alive[0] -= 1

    def generate():
        for index in range(24):
            frame = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(index))
            alive[0] += 1
            most[0] = max(most[0], alive[0])
            weakref.finalize(frame, forget, None)
            yield frame
            del frame

    for _ in birefnet_core.stream_mattes(model, generate(), batch_size=4, stabilize=1.0,
                                         method="median"):
        pass
    # one batch being read + the median window (5) + one frame in the consumer's hands
    assert most[0] <= 4 + 5 + 2, most[0]


def test_an_exception_from_progress_stops_within_one_pass(model):
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.info = inner, inner.info

        def forward(self, x):
            calls.append(x.shape[0])
            return self.inner(x)

    def stop(done, total):
        raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        birefnet_core.matte_video(Counting(model), _frames(count=12), batch_size=4,
                                  progress=stop)
    assert calls == [4]


def test_out_of_memory_halves_the_pass(model):
    frames = _frames(count=5)
    wrapped = _RunsOutAboveTwo(model)
    masks = birefnet_core.matte_video(wrapped, iter(frames), batch_size=8)
    assert wrapped.sizes[:3] == [5, 4, 2] and max(wrapped.sizes[3:]) <= 2
    assert torch.allclose(masks, birefnet_core.predict(model, frames), atol=SAME_MASK)


def test_refine_applies_refine_mask_to_each_stabilised_mask(model):
    frames = _frames(count=3)
    options = dict(guided_radius=2, guided_eps=1e-2, feather=1.0)
    plain = birefnet_core.matte_video(model, frames)
    refined = birefnet_core.matte_video(model, frames, refine=options)
    # the same float32 refine_mask on the same masks: a few ulps of values <= 1 at most
    assert torch.allclose(refined, birefnet_core.refine_mask(frames, plain, **options), atol=1e-6)
    assert (refined - plain).abs().max() > 1e-3


def test_bad_input_is_named(model):
    with pytest.raises(InputError, match="frame 2"):
        birefnet_core.matte_video(model, [torch.rand(3, 32, 32)] * 2 + [torch.rand(3, 32, 40)],
                                  batch_size=4)
    with pytest.raises(InputError, match="no frames"):
        birefnet_core.matte_video(model, iter([]))
    with pytest.raises(InputError, match=r"\(T, C, H, W\)"):
        birefnet_core.matte_video(model, torch.rand(3, 32, 32))
    with pytest.raises(InputError, match="strength"):
        birefnet_core.matte_video(model, _frames(2), stabilize=1.5)
    with pytest.raises(InputError, match="method"):
        birefnet_core.matte_video(model, _frames(2), stabilize=0.5, method="mean")


# --------------------------------------------------------------------------- stabiliser

@pytest.mark.parametrize("method", STABILIZE_METHODS)
def test_stabilising_halves_flicker_without_edge_lag(method):
    clip = make_clip(size=128, frames=24)
    masks = simulated_masks(clip)
    stable = _stabilized(clip, masks, 1.0, method)
    assert static_flicker(stable, clip) < 0.5 * static_flicker(masks, clip)
    before, after = edge_lag(masks, clip), edge_lag(stable, clip)
    for edge in before:
        assert abs(after[edge] - before[edge]) <= 1.0, (edge, before, after)


def test_strength_zero_returns_the_same_tensors():
    frame, mask = torch.rand(3, 8, 8), torch.rand(1, 8, 8)
    for method in STABILIZE_METHODS:
        (out_frame, out_mask), = TemporalStabilizer(0.0, method).push(frame, mask)
        assert out_frame is frame and out_mask is mask


def test_median_keeps_an_object_seen_in_one_frame_only():
    still = torch.full((3, 64, 64), 0.5)
    flash = still.clone()
    flash[:, 20:40, 20:40] = 1.0
    frames = [still, still, flash, still, still]
    masks = [torch.zeros(1, 64, 64)] * 2 + [(flash[:1] > 0.9).float()] + [torch.zeros(1, 64, 64)] * 2
    stabilizer, out = TemporalStabilizer(1.0, "median"), []
    for frame, mask in zip(frames, masks):
        out += stabilizer.push(frame, mask)
    out += stabilizer.flush()
    assert [f is g for (f, _), g in zip(out, frames)] == [True] * 5
    assert out[2][1][0, 25:35, 25:35].min() > 0.99             # not voted away by its neighbours


def test_ema_resets_on_a_cut():
    first, cut = torch.zeros(3, 32, 32), torch.ones(3, 32, 32)
    stabilizer = TemporalStabilizer(1.0, "ema")
    stabilizer.push(first, torch.zeros(1, 32, 32))
    (_, mask), = stabilizer.push(cut, torch.ones(1, 32, 32))
    assert torch.equal(mask, torch.ones(1, 32, 32))
    (_, mask), = stabilizer.push(cut, torch.zeros(1, 32, 32))  # still scene: smoothed
    assert mask.mean() > 0.5
