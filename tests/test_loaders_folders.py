"""Folder datasets (ImageFolder, Restricted-ImageNet) through the torch and dali loaders.

The fixture writes small JPEGs with PIL: each image is one flat colour that encodes its
sample number and class, so any crop, resize or flip of it still tells which file it came
from; a second fixture has a dark left half and a bright right half to reveal flips.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rrm_fast.data import (RESTRICTED_IMAGENET_RANGES, DatasetError, FolderDataset, dali_available, load_dataset,
                           make_loader, split_holdout)

KINDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="DALI not installed"))]
STEP = 40  # colour levels STEP apart survive JPEG and bilinear resizing of a flat image
RES = 24
# In-process torch loading keeps most tests fast; the sample-once and unreadable-image tests
# run a worker process to cover PIL decoding and error reporting across the process boundary.
WORKERS = {"torch": 0, "dali": 1}


def _colour(i: int, label: int) -> tuple[int, int, int]:
    return (STEP * (i % 6) + 20, STEP * (i // 6) + 20, STEP * label + 20)


def _decode(x: torch.Tensor) -> tuple[list[int], list[int]]:
    c = (x.mean(dim=(2, 3)) * 255).cpu()
    level = ((c - 20) / STEP).round().long()
    return (level[:, 0] + 6 * level[:, 1]).tolist(), level[:, 2].tolist()


def write_tree(root, n_per_class=(7, 5, 6), size=(40, 30), split="train"):
    i = 0
    for label, n in enumerate(n_per_class):
        folder = root / split / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            Image.new("RGB", size, _colour(i, label)).save(folder / f"img_{i:03d}.jpg", quality=95)
            i += 1
    return i


@pytest.fixture
def tree(tmp_path):
    n = write_tree(tmp_path)
    write_tree(tmp_path, n_per_class=(2, 2, 2), split="val")
    return tmp_path, n


def test_imagefolder_dataset(tree):
    root, n = tree
    ds = load_dataset("imagefolder", "train", str(root), resolution=RES)
    assert isinstance(ds, FolderDataset) and len(ds) == n and ds.num_classes == 3
    assert ds.classes == ("class_0", "class_1", "class_2") and ds.resolution == RES
    assert [lab for _, lab in ds.samples] == [0] * 7 + [1] * 5 + [2] * 6
    assert len(load_dataset("imagefolder", "test", str(root))) == 6  # val/ serves the test split
    rest, hold = split_holdout(ds, 4, seed=0)
    assert len(hold) == 4 and not {p for p, _ in hold.samples} & {p for p, _ in rest.samples}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [True, False])
def test_folder_every_sample_once_with_its_label(tree, kind, train):
    root, n = tree
    ds = load_dataset("imagefolder", "train", str(root), resolution=RES)
    loader = make_loader(kind, ds, 5, train=train, seed=0, num_workers=1)
    assert loader.kind == kind and len(loader) == 4
    xs, ys = zip(*[(x.clone(), y.clone()) for x, y in loader])
    assert [len(y) for y in ys] == [5, 5, 5, 3]
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (n, 3, RES, RES) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    idx, label_from_pixels = _decode(x)
    assert sorted(idx) == list(range(n))
    assert y.tolist() == label_from_pixels
    assert y.tolist() == [ds.samples[i][1] for i in idx]
    assert (idx == list(range(n))) == (not train)


@pytest.mark.parametrize("kind", KINDS)
def test_folder_identical_seeds_identical_batches(tree, kind):
    root, _ = tree
    ds = load_dataset("imagefolder", "train", str(root), resolution=RES)
    runs = []
    for seed in (1, 1, 2):
        loader = make_loader(kind, ds, 6, train=True, seed=seed, num_workers=WORKERS[kind])
        loader.set_epoch(1)
        runs.append([(x.clone(), y.clone()) for x, y in loader])
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(runs[0], runs[2]))


@pytest.mark.parametrize("kind", KINDS)
def test_folder_flip_rate_and_crops_vary(tmp_path, kind):
    folder = tmp_path / "train" / "halves"
    folder.mkdir(parents=True)
    img = np.zeros((32, 64, 3), np.uint8)
    img[:, 32:] = 255  # dark left half, bright right half
    for i in range(300):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    ds = load_dataset("imagefolder", "train", str(tmp_path), resolution=16)
    x = torch.cat([x for x, _ in make_loader(kind, ds, 100, train=True, seed=0, num_workers=WORKERS[kind])])
    left, right = x[:, :, :, :4].mean(dim=(1, 2, 3)), x[:, :, :, -4:].mean(dim=(1, 2, 3))
    informative = (left - right).abs() > 0.5  # crops that straddle the boundary
    assert informative.sum() > 100
    flipped = (left > right)[informative].float().mean()
    assert 0.35 < flipped < 0.65, f"flip rate {flipped}"
    assert (~informative).sum() > 0  # random-resized crops: some windows fall inside one half


@pytest.mark.parametrize("kind", KINDS)
def test_folder_sharding_partitions(tree, kind):
    root, n = tree
    ds = load_dataset("imagefolder", "train", str(root), resolution=RES)
    seen = []
    for rank in range(2):
        loader = make_loader(kind, ds, 4, train=False, rank=rank, world_size=2, num_workers=WORKERS[kind])
        seen += _decode(torch.cat([x for x, _ in loader]))[0]
    assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("kind", KINDS)
def test_folder_resume_same_images(tree, kind):
    root, _ = tree
    ds = load_dataset("imagefolder", "train", str(root), resolution=RES)
    loader = make_loader(kind, ds, 4, train=True, seed=5, num_workers=WORKERS[kind])
    full = [y.clone() for _, y in loader]
    loader.set_start_batch(2)
    resumed = [(x.clone(), y.clone()) for x, y in loader]
    assert [y.tolist() for y in full[2:]] == [y.tolist() for _, y in resumed]
    if kind == "torch":  # per-image seeds make the torch loader's crops resume exactly too
        loader.set_start_batch(0)
        xs = [x for x, _ in loader]
        assert all(torch.equal(a, b) for a, b in zip(xs[2:], [x for x, _ in resumed]))


@pytest.mark.parametrize("kind", KINDS)
def test_unreadable_image_clear_error(tree, kind):
    root, _ = tree
    bad = root / "train" / "class_1" / "img_999.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ds = load_dataset("imagefolder", "train", str(root), resolution=RES)
    loader = make_loader(kind, ds, 30, train=False, num_workers=1)
    with pytest.raises(DatasetError) as err:
        list(loader)
    msg = str(err.value)
    assert "\n" not in msg
    assert ("unreadable image" in msg and "img_999.jpg" in msg) if kind == "torch" else "DALI could not read" in msg


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="imagefolder needs --data-dir"):
        load_dataset("imagefolder", "train")
    with pytest.raises(DatasetError, match="folder not found"):
        load_dataset("imagefolder", "train", str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match=r"wrong layout .*no train/ subfolder"):
        load_dataset("imagefolder", "train", str(tmp_path))
    (tmp_path / "train").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "loose.jpg")  # images not in class folders
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_dataset("imagefolder", "train", str(tmp_path))
    (tmp_path / "train" / "cats").mkdir()
    (tmp_path / "train" / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"empty class folder .*cats"):
        load_dataset("imagefolder", "train", str(tmp_path))
    with pytest.raises(DatasetError, match="resolution must be an integer"):
        write_tree(tmp_path / "ok")
        load_dataset("imagefolder", "train", str(tmp_path / "ok"), resolution=3)
    with pytest.raises(DatasetError, match="fixed image size"):
        load_dataset("synthetic", "train", resolution=64)


def test_restricted_imagenet_label_mapping(tmp_path):
    train = tmp_path / "train"
    wnids = [f"n{1000000 + 7 * k:08d}" for k in range(1000)]
    for w in wnids:
        (train / w).mkdir(parents=True)
    # class index -> expected super-class (None: not part of Restricted-ImageNet)
    probes = {151: 0, 268: 0, 269: None, 281: 1, 30: 2, 32: 2, 33: 3, 100: 4, 365: 5, 397: 6, 118: 7, 319: 8, 320: None, 0: None}
    for k in probes:
        Image.new("RGB", (8, 8)).save(train / wnids[k] / f"{k}.jpg")
    ds = load_dataset("restricted_imagenet", "train", str(tmp_path), resolution=32)
    assert ds.num_classes == 9 == len(RESTRICTED_IMAGENET_RANGES)
    got = {int(os.path.basename(p).split(".")[0]): lab for p, lab in ds.samples}
    assert got == {k: v for k, v in probes.items() if v is not None}
    assert ds.mean == (0.4717, 0.4499, 0.3837)
    (train / wnids[0] / "0.jpg").unlink()
    (train / wnids[0]).rmdir()
    with pytest.raises(DatasetError, match="needs the 1000 ImageNet class folders .* found 999"):
        load_dataset("restricted_imagenet", "train", str(tmp_path))


def test_auto_picks_dali_for_folders_when_installed(tree, caplog):
    root, _ = tree
    ds = load_dataset("imagefolder", "train", str(root), resolution=RES)
    with caplog.at_level(logging.INFO, logger="rrm_fast"):
        loader = make_loader("auto", ds, 4, train=True, num_workers=1)
    expected = "dali" if dali_available() else "torch"
    assert loader.kind == expected
    assert any(f"picked '{expected}'" in r.getMessage() for r in caplog.records)
