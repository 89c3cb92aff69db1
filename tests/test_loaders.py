"""Loader battery: epoch semantics, augmentation bounds, determinism, resume and sharding.

Every test runs for each loader kind in KINDS (DALI in CPU mode when installed), on tiny
datasets whose pixels encode the sample index, so the checks trace each output back to
its source sample exactly.
"""
from __future__ import annotations

import logging
import sys

import pytest
import torch

from rrm_fast.data import ArrayDataset, DatasetError, dali_available, load_dataset
from rrm_fast.data import make_loader as _make_loader

KINDS = ["device", "torch", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="DALI not installed"))]


def make_loader(kind, ds, batch_size, **kw):
    # In-process loading keeps the battery fast; worker processes are tested separately.
    if kind == "torch":
        kw.setdefault("num_workers", 0)
    return _make_loader(kind, ds, batch_size, **kw)


def index_coded(n: int = 300, hw: int = 8, pad: int = 2, flip: bool = True) -> ArrayDataset:
    """Constant images: channel 0 = i % 256, channel 1 = i // 256, channel 2 = 1 + label;
    label = i % 10. Any in-bounds pixel of any crop identifies the sample."""
    i = torch.arange(n)
    planes = torch.stack([i % 256, i // 256, 1 + i % 10], 1).to(torch.uint8)
    images = planes[:, :, None, None].expand(n, 3, hw, hw).contiguous()
    return ArrayDataset("index_coded", images, i % 10, 10, (0.5,) * 3, (0.25,) * 3, pad=pad, flip=flip)


def decode(x: torch.Tensor) -> torch.Tensor:
    """Sample index from the centre pixel (always inside the crop when pad <= H/2)."""
    c = (x[:, :, x.shape[2] // 2, x.shape[3] // 2] * 255).round().long().cpu()
    return c[:, 0] + 256 * c[:, 1]


def position_coded(n: int = 2000, hw: int = 12, pad: int = 4, flip: bool = True) -> ArrayDataset:
    """Every image is the same ramp: pixel (r, c) = 1 + r*hw + c, so a crop reveals its offset."""
    ramp = (1 + torch.arange(hw * hw)).view(1, 1, hw, hw).to(torch.uint8)
    return ArrayDataset("position_coded", ramp.expand(n, 1, hw, hw).contiguous(), torch.arange(n) % 10, 10,
                        (0.5,), (0.25,), pad=pad, flip=flip)


def collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [True, False])
def test_every_sample_once_with_its_label(kind, train):
    ds = index_coded()
    loader = make_loader(kind, ds, 64, train=train, seed=1)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = collect(loader)
        assert len(batches) == len(loader) == 5
        assert [len(y) for _, y in batches] == [64, 64, 64, 64, 44]  # last partial batch kept
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (3, 8, 8)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        idx = decode(x)
        assert sorted(idx.tolist()) == list(range(len(ds)))
        assert torch.equal(y, idx % 10)
        centre = (x[:, 2, 4, 4] * 255).round().long()
        assert torch.equal(centre, 1 + y)  # label channel agrees with the label tensor
        if train:
            assert idx.tolist() != list(range(len(ds)))  # shuffled
        else:
            assert idx.tolist() == list(range(len(ds)))  # fixed order


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pad,flip", [(4, True), (3, False), (0, True)])
def test_crop_offsets_within_padding_and_flip_rate(kind, pad, flip):
    hw = 12
    ds = position_coded(hw=hw, pad=pad, flip=flip)
    loader = make_loader(kind, ds, 500, train=True, seed=0)
    x = torch.cat([b[0] for b in collect(loader)])
    v = (x[:, 0] * 255).round().long()  # (N, hw, hw); 0 where the crop reaches into the padding
    nz = v > 0
    assert nz.flatten(1).any(1).all()
    rr, cc = torch.meshgrid(torch.arange(hw), torch.arange(hw), indexing="ij")
    src_r, src_c = (v - 1) // hw, (v - 1) % hw

    def constant(t):  # per image: is t the same at every in-bounds pixel? and that value
        hi = torch.where(nz, t, -10**6).amax((1, 2))
        lo = torch.where(nz, t, 10**6).amin((1, 2))
        return hi == lo, hi

    # a crop is a rigid shift of the source: src_c - c constant (unflipped) or src_c + c (flipped)
    const_minus, shift_minus = constant(src_c - cc)
    const_plus, shift_plus = constant(src_c + cc)
    const_rows, shift_rows = constant(src_r - rr)
    assert const_rows.all() and (const_minus ^ const_plus).all(), "a crop must be a rigid shift of the source"
    flipped = const_plus
    oy = shift_rows + pad
    ox = torch.where(flipped, shift_plus - (hw - 1), shift_minus) + pad
    assert ((0 <= oy) & (oy <= 2 * pad) & (0 <= ox) & (ox <= 2 * pad)).all()
    # exactly the out-of-bounds pixels are zero (zero padding)
    src_row = rr + oy[:, None, None] - pad
    src_col = torch.where(flipped[:, None, None], hw - 1 - cc, cc) + ox[:, None, None] - pad
    inside = (src_row >= 0) & (src_row < hw) & (src_col >= 0) & (src_col < hw)
    assert torch.equal(nz, inside)
    offsets = list(zip(oy.tolist(), ox.tolist()))
    flips = flipped.tolist()
    rate = sum(flips) / len(flips)
    if flip:
        assert 0.45 < rate < 0.55, f"flip rate {rate}"
    else:
        assert rate == 0
    for axis in (0, 1):
        offs = torch.tensor([o[axis] for o in offsets])
        assert sorted(offs.unique().tolist()) == list(range(2 * pad + 1))  # every offset occurs
        assert offs.bincount().min() > len(offs) / (2 * pad + 1) / 2  # roughly uniform


@pytest.mark.parametrize("kind", KINDS)
def test_eval_loader_does_not_augment(kind):
    ds = position_coded(n=50)
    x = torch.cat([b[0] for b in collect(make_loader(kind, ds, 16, train=False))])
    assert torch.equal((x * 255).round().to(torch.uint8), ds.images.expand_as(x))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed_and_epoch(kind):
    ds = index_coded()
    a = make_loader(kind, ds, 64, train=True, seed=5)
    b = make_loader(kind, ds, 64, train=True, seed=5)
    c = make_loader(kind, ds, 64, train=True, seed=6)
    ba, bb, bc = collect(a), collect(b), collect(c)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(ba, bb))
    assert not torch.equal(ba[0][0], bc[0][0])
    assert all(torch.equal(p[0], q[0]) for p, q in zip(ba, collect(a)))  # no set_epoch: same epoch again
    a.set_epoch(1)
    assert not torch.equal(ba[0][1], collect(a)[0][1])


@pytest.mark.parametrize("kind", KINDS)
def test_global_rng_untouched(kind):
    loader = make_loader(kind, position_coded(n=100), 32, train=True, seed=0)
    state = torch.get_rng_state()
    collect(loader)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("kind", KINDS)
def test_set_start_batch_resumes_exactly(kind):
    ds = position_coded(n=300)
    loader = make_loader(kind, ds, 64, train=True, seed=2)
    loader.set_epoch(3)
    full = collect(loader)
    loader.set_start_batch(2)
    resumed = collect(loader)
    assert len(resumed) == len(full) - 2
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(full[2:], resumed))
    assert len(collect(loader)) == len(full)  # the start batch applies to one iteration only
    with pytest.raises(ValueError, match="start batch"):
        loader.set_start_batch(len(loader) + 1)


@pytest.mark.parametrize("kind", KINDS)
def test_sharding_partitions_epoch(kind):
    ds = index_coded(n=301)
    world = 3
    # training: same number of batches everywhere, all samples covered, padding wraps around
    per_rank = []
    for rank in range(world):
        loader = make_loader(kind, ds, 32, train=True, seed=9, rank=rank, world_size=world)
        loader.set_epoch(2)
        per_rank.append(decode(torch.cat([b[0] for b in collect(loader)])).tolist())
        assert len(loader) == 4
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == 101
    flat = sum(per_rank, [])
    assert set(flat) == set(range(301)) and len(flat) - len(set(flat)) == 2
    # evaluation: a strict partition, every sample exactly once
    parts = [decode(torch.cat([b[0] for b in collect(make_loader(kind, ds, 32, train=False, rank=r, world_size=world))])).tolist()
             for r in range(world)]
    assert sorted(sum(parts, [])) == list(range(301))
    # drop_last truncates to a multiple of world_size, then to whole batches
    loader = make_loader(kind, ds, 32, train=True, drop_last=True, rank=1, world_size=world)
    assert len(loader) == 3 and all(len(y) == 32 for _, y in collect(loader))


@pytest.mark.parametrize("kind", KINDS)
def test_drop_last_and_channels_last(kind):
    ds = index_coded(n=100)
    loader = make_loader(kind, ds, 32, train=True, drop_last=True, channels_last=True)
    batches = collect(loader)
    assert len(loader) == len(batches) == 3
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
    x, _ = next(iter(make_loader(kind, ds, 32, train=False)))
    assert x.is_contiguous()


def test_auto_picks_device_on_cpu_and_logs(caplog):
    ds = load_dataset("synthetic", "test")
    with caplog.at_level(logging.INFO, logger="rrm_fast"):
        loader = make_loader("auto", ds, 100, train=True)
    assert loader.kind == "device"
    assert any("picked 'device'" in r.getMessage() for r in caplog.records)


def test_bad_arguments():
    ds = index_coded(n=10)
    with pytest.raises(DatasetError, match="unknown loader 'fast'"):
        make_loader("fast", ds, 4, train=True)
    with pytest.raises(DatasetError, match="batch_size must be a positive integer"):
        make_loader("device", ds, 0, train=True)
    with pytest.raises(DatasetError, match="rank < world_size"):
        make_loader("device", ds, 4, train=True, rank=2, world_size=2)
    with pytest.raises(DatasetError, match="leaves no batch"):
        make_loader("device", ds, 32, train=True, drop_last=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_loader_on_cuda_matches_cpu():
    ds = position_coded(n=300)
    cpu = collect(make_loader("device", ds, 64, train=True, seed=4))
    gpu = collect(make_loader("device", ds, 64, train=True, seed=4, device="cuda"))
    assert gpu[0][0].is_cuda and gpu[0][1].is_cuda
    assert all(torch.equal(p[0], q[0].cpu()) and torch.equal(p[1], q[1].cpu()) for p, q in zip(cpu, gpu))


@pytest.mark.parametrize("kind", [k for k in ("torch", "dali") if k != "dali" or dali_available()])
@pytest.mark.parametrize("train", [True, False])
def test_loaders_agree_with_device_loader(kind, train):
    """Same plan, same batches: every kind crops/flips the same pixels for the same (seed, epoch)."""
    ds = position_coded(n=130, hw=12, pad=3)
    ref = make_loader("device", ds, 32, train=train, seed=11)
    other = make_loader(kind, ds, 32, train=train, seed=11)
    for loader in (ref, other):
        loader.set_epoch(4)
    for (xr, yr), (xo, yo) in zip(collect(ref), collect(other), strict=True):
        assert torch.equal(yr, yo)
        assert torch.equal((xr * 255).round().to(torch.uint8), (xo * 255).round().to(torch.uint8))
        assert torch.allclose(xr, xo, rtol=0, atol=1e-6)


def test_torch_loader_with_worker_processes_and_abandoned_epoch():
    ds = index_coded(n=200)
    ref = collect(make_loader("device", ds, 32, train=True, seed=3))
    loader = make_loader("torch", ds, 32, train=True, seed=3, num_workers=2)
    it = iter(loader)
    next(it)  # abandon the epoch after one batch: the next iteration must start cleanly
    for _ in range(2):
        got = collect(loader)
        assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(ref, got, strict=True))


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_dali_loader_abandoned_epoch_restarts_cleanly():
    ds = index_coded(n=200)
    loader = make_loader("dali", ds, 32, train=True, seed=3)
    first = collect(loader)
    it = iter(loader)
    next(it)
    next(it)
    del it
    again = collect(loader)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(first, again, strict=True))


def test_dali_missing_gives_install_hint(monkeypatch):
    # DALI absent, as Python sees a package that is not installed (nothing of rrm_fast is patched)
    monkeypatch.setitem(sys.modules, "nvidia", None)
    assert not dali_available()
    with pytest.raises(DatasetError, match=r"^--loader dali needs NVIDIA DALI: pip install nvidia-dali-cuda130"):
        _make_loader("dali", index_coded(n=10), 4, train=True)
