"""Whole-batch augmentation and the in-memory loader."""

import numpy as np
import torch

from pipeline.data.prepared import Split
from pipeline.data.loader import Augmentation, BatchLoader, Order, random_crop_flip


def make_split(n=37, h=8, w=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=(n, h, w, c), dtype=np.uint8)  # no zeros: padding is visible
    return Split(x, rng.integers(0, 5, n).astype(np.int64), np.arange(n, dtype=np.int64))


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, pad=2, flip=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, oy:oy + 8, ox:ox + 8] for oy in range(5) for ox in range(5)]
        assert any(torch.equal(out[i], win) for win in windows)
    # offsets vary across the batch: not every sample is the centre crop
    assert sum(torch.equal(out[i], x[i]) for i in range(len(x))) < len(x)


def test_flip_mirrors_about_half_of_the_batch():
    x = torch.randint(0, 256, (400, 1, 4, 4), dtype=torch.uint8)
    out = random_crop_flip(x, pad=0, flip=True, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(out[i], x[i].flip(2)) and not torch.equal(x[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 150 < sum(flipped) < 250  # Binomial(400, 1/2): mean 200, sd 10


def test_batches_are_normalised_and_carry_their_indices():
    split = make_split()
    mean, std = [100.0, 110.0, 120.0], [50.0, 60.0, 70.0]
    loader = BatchLoader(split, (mean, std), batch_size=10)
    batches = list(loader.epoch(0))
    assert [len(b.y) for b in batches] == [10, 10, 10, 7]
    b = batches[1]
    assert b.x.dtype == torch.float32 and b.x.shape == (10, 3, 8, 8)
    expect = (torch.from_numpy(split.x[10:20]).permute(0, 3, 1, 2).float()
              - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(b.x, expect)
    assert torch.equal(b.index, torch.arange(10, 20))
    assert torch.equal(b.y, torch.from_numpy(split.y[10:20]))


def test_augmented_values_stay_in_the_normalised_range():
    split = make_split(n=50)
    loader = BatchLoader(split, ([127.5] * 3, [127.5] * 3), batch_size=25, augment=Augmentation(pad=4),
                         order=Order(shuffle=True))
    for b in loader.epoch(3):
        assert b.x.min() >= -1.0 and b.x.max() <= 1.0
        assert torch.equal(b.y, torch.from_numpy(split.y)[b.index])


def test_shuffled_epoch_visits_every_sample_once_and_is_reproducible():
    split = make_split(n=40)
    loader = BatchLoader(split, ([0.0] * 3, [1.0] * 3), batch_size=8, order=Order(shuffle=True, drop_last=True, seed=5),
                         augment=Augmentation())
    idx = torch.cat([b.index for b in loader.epoch(2)])
    assert sorted(idx.tolist()) == list(range(40))
    again = torch.cat([b.index for b in loader.epoch(2)])
    other = torch.cat([b.index for b in loader.epoch(3)])
    assert torch.equal(idx, again) and not torch.equal(idx, other)
    xa = next(loader.epoch(2)).x
    assert torch.equal(xa, next(loader.epoch(2)).x)  # augmentation is seeded by (seed, epoch) too


def test_drop_last_drops_the_small_tail_batch():
    loader = BatchLoader(make_split(n=37), ([0.0] * 3, [1.0] * 3), batch_size=10,
                         order=Order(shuffle=True, drop_last=True))
    assert len(loader) == 3 and [len(b.y) for b in loader.epoch(0)] == [10, 10, 10]


def test_channel_stats_equal_the_float64_moments_without_a_float_copy():
    """Exact against numpy's float64 mean/std, and the peak of allocations stays a fraction of
    the data (a float64 copy would be 8x the uint8 images)."""
    import tracemalloc

    from pipeline.data.loader import channel_stats

    x = np.random.default_rng(3).integers(0, 256, size=(3000, 16, 16, 3), dtype=np.uint8)
    x[:, :, :, 2] //= 7  # channels with different moments
    flat = x.reshape(-1, 3).astype(np.float64)
    mean, std = channel_stats(x, chunk=256)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-13)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-12)
    del flat
    tracemalloc.start()
    channel_stats(x, chunk=64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < x.nbytes / 2, (peak, x.nbytes)  # chunks of 64 images: int64 block + squares


def test_an_unaugmented_sweep_gives_every_image_as_it_is():
    """What JTT's error set is computed on: every training image once, not cropped or flipped."""
    split = make_split(n=23)
    loader = BatchLoader(split, ([0.0] * 3, [1.0] * 3), batch_size=5, augment=Augmentation(pad=4),
                         order=Order(shuffle=True, drop_last=True, seed=1))
    seen = {int(i): b.x[k] for b in loader.sweep(augment=False) for k, i in enumerate(b.index)}
    assert sorted(seen) == list(range(23))
    for i, x in seen.items():
        assert torch.equal(x, torch.from_numpy(split.x[i].transpose(2, 0, 1)).float())
