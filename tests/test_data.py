"""Datasets: Fashion-MNIST IDX parsing, CIFAR restricted unpickling, synthetic data, holdout split."""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from rrm_fast.data import DATASETS, ArrayDataset, DatasetError, load_dataset, split_holdout
from rrm_fast.data.cifar import load_pickle_restricted

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
have_fmnist = os.path.isfile(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz"))


# ---------------------------------------------------------------- Fashion-MNIST (real files)

@pytest.mark.skipif(not have_fmnist, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_matches_raw_file_bytes():
    for split, prefix, n in (("train", "train", 60000), ("test", "t10k", 10000)):
        ds = load_dataset("fashion_mnist", split)
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.uint8 and ds.images.is_contiguous()
        assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
        assert (ds.pad, ds.flip, ds.num_classes) == (0, False, 10)
        with gzip.open(os.path.join(FMNIST_DIR, f"{prefix}-images-idx3-ubyte.gz")) as fh:
            raw_img = fh.read()
        with gzip.open(os.path.join(FMNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz")) as fh:
            raw_lab = fh.read()
        for i in (0, 1, 777, n - 1):  # image i starts at byte 16 + 784 i, label i at byte 8 + i
            assert bytes(ds.images[i].flatten().tolist()) == raw_img[16 + 784 * i: 16 + 784 * (i + 1)]
            assert int(ds.labels[i]) == raw_lab[8 + i]
        assert torch.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10


@pytest.mark.skipif(not have_fmnist, reason="Fashion-MNIST not installed")
def test_fashion_mnist_mean_std_constants_match_train_set():
    ds = load_dataset("fashion_mnist", "train")
    x = ds.images.double() / 255
    assert ds.mean[0] == pytest.approx(float(x.mean()), abs=1e-4)
    assert ds.std[0] == pytest.approx(float(x.std(unbiased=False)), abs=1e-4)
    assert load_dataset("fashion_mnist", "test").mean == ds.mean  # test split uses train statistics


# ---------------------------------------------------------------- Fashion-MNIST (tiny fixture files)

def _write_idx(folder, prefix, images: np.ndarray, labels: np.ndarray, img_magic=2051, lab_magic=2049):
    n, r, c = images.shape
    with gzip.open(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "wb") as fh:
        fh.write(struct.pack(">IIII", img_magic, n, r, c) + images.tobytes())
    with gzip.open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as fh:
        fh.write(struct.pack(">II", lab_magic, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for prefix, n in (("train", 30), ("t10k", 12)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = rng.integers(0, 10, n)
        _write_idx(tmp_path, prefix, imgs, labs)
        data[prefix] = (imgs, labs)
    return tmp_path, data


def test_fashion_mnist_data_dir_override(tiny_fmnist):
    folder, data = tiny_fmnist
    ds = load_dataset("fashion_mnist", "test", data_dir=str(folder))
    imgs, labs = data["t10k"]
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs))
    assert ds.labels.tolist() == labs.tolist()


def test_fashion_mnist_missing_folder_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"not found at .*nowhere.*apt-get install dataset-fashion-mnist.*--data-dir") as err:
        load_dataset("fashion_mnist", "train", data_dir=str(missing))
    assert "\n" not in str(err.value)


def test_fashion_mnist_missing_file(tiny_fmnist):
    folder, _ = tiny_fmnist
    os.remove(folder / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion_mnist", "test", data_dir=str(folder))


def test_fashion_mnist_corrupt_gzip(tiny_fmnist):
    folder, _ = tiny_fmnist
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate")
    with pytest.raises(DatasetError, match="not a readable gzip file"):
        load_dataset("fashion_mnist", "train", data_dir=str(folder))


def test_fashion_mnist_wrong_magic_and_truncation(tmp_path):
    imgs = np.zeros((4, 28, 28), np.uint8)
    _write_idx(tmp_path, "train", imgs, np.zeros(4), img_magic=2049)
    with pytest.raises(DatasetError, match="wrong magic number 2049"):
        load_dataset("fashion_mnist", "train", data_dir=str(tmp_path))
    _write_idx(tmp_path, "train", imgs, np.zeros(4), lab_magic=2051)
    with pytest.raises(DatasetError, match="wrong magic number 2051"):
        load_dataset("fashion_mnist", "train", data_dir=str(tmp_path))
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as fh:  # header claims 5 images, holds 4
        fh.write(struct.pack(">IIII", 2051, 5, 28, 28) + imgs.tobytes())
    with pytest.raises(DatasetError, match="header says 5x28x28"):
        load_dataset("fashion_mnist", "train", data_dir=str(tmp_path))


def test_fashion_mnist_image_label_count_mismatch(tmp_path):
    _write_idx(tmp_path, "train", np.zeros((4, 28, 28), np.uint8), np.zeros(3))
    with pytest.raises(DatasetError, match="4 images but 3 labels"):
        load_dataset("fashion_mnist", "train", data_dir=str(tmp_path))


# ---------------------------------------------------------------- CIFAR (tiny files in the official format)

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python-2 str opcodes, like the official (Python 2) CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump(path, obj, py2: bool):
    if py2:
        import io
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        # numpy 1.x (which wrote the real files) named the reconstructor numpy.core.multiarray.
        path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)


def make_cifar_dir(root, name: str, n_per_file: int = 6, py2: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, key, classes = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 10
    else:
        folder, files, key, classes = root / "cifar-100-python", ["train", "test"], b"fine_labels", 100
    folder.mkdir(parents=True)
    written = {}
    for f in files:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n_per_file).tolist()
        batch = {b"batch_label": b"tiny batch", b"data": data, key: labels, b"filenames": [b"x.png"] * n_per_file}
        if name == "cifar100":
            batch[b"coarse_labels"] = [lab // 5 for lab in labels]
        _dump(folder / f, batch, py2)
        written[f] = (data, labels)
    return folder, written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("py2", [True, False])
def test_cifar_reads_official_layout(tmp_path, name, py2):
    folder, written = make_cifar_dir(tmp_path, name, py2=py2)
    train_files = [f for f in written if f.startswith("data_batch") or f == "train"]
    test_file = "test_batch" if name == "cifar10" else "test"
    for data_dir in (folder, tmp_path):  # the batches folder itself, or its parent
        tr = load_dataset(name, "train", data_dir=str(data_dir))
        te = load_dataset(name, "test", data_dir=str(data_dir))
        exp = np.concatenate([written[f][0] for f in train_files])
        assert tr.images.shape == (len(exp), 3, 32, 32) and tr.images.dtype == torch.uint8
        assert torch.equal(tr.images.reshape(len(exp), -1), torch.from_numpy(exp))
        assert tr.labels.tolist() == sum((written[f][1] for f in train_files), [])
        assert te.labels.tolist() == written[test_file][1]
        # pixel (c, y, x) of image 0 is byte c*1024 + y*32 + x of its row: R plane, then G, then B
        assert int(te.images[0, 1, 2, 3]) == int(written[test_file][0][0, 1024 + 2 * 32 + 3])
        assert (tr.pad, tr.flip, tr.num_classes) == (4, True, 10 if name == "cifar10" else 100)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_unsafe_pickle_refused(tmp_path, monkeypatch):
    folder, _ = make_cifar_dir(tmp_path, "cifar10")
    monkeypatch.chdir(tmp_path)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(DatasetError, match=r"^unsafe pickle: .*test_batch references (posix|os|nt)\.system") as err:
        load_dataset("cifar10", "test", data_dir=str(folder))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("payload", [
    b"cbuiltins\neval\n(S'1+1'\ntR.",
    b"c_codecs\nencode\n(S'x'\nS'zlib'\ntR.",
    b"cnumpy\nload\n(S'x'\ntR.",
])
def test_restricted_unpickler_refuses_other_globals(tmp_path, payload):
    path = tmp_path / "evil"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match="unsafe pickle"):
        load_pickle_restricted(str(path))


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar10 needs a data folder: download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"):
        load_dataset("cifar10", "train")
    with pytest.raises(DatasetError, match=r"cifar100 not found at .*cifar-100-python"):
        load_dataset("cifar100", "train", data_dir=str(tmp_path))
    folder, _ = make_cifar_dir(tmp_path, "cifar10")
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(DatasetError, match="data_batch_3 is not a readable CIFAR pickle"):
        load_dataset("cifar10", "train", data_dir=str(folder))
    os.remove(folder / "data_batch_3")
    with pytest.raises(DatasetError, match="cifar10 file missing: .*data_batch_3"):
        load_dataset("cifar10", "train", data_dir=str(folder))


def test_cifar_wrong_shape_rejected(tmp_path):
    folder, _ = make_cifar_dir(tmp_path, "cifar10")
    _dump(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, py2=True)
    with pytest.raises(DatasetError, match=r"must be a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", "test", data_dir=str(folder))


# ---------------------------------------------------------------- synthetic, names, holdout, ArrayDataset

def test_synthetic_deterministic_and_learnable_structure():
    a, b = load_dataset("synthetic", "train"), load_dataset("synthetic", "train")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    te = load_dataset("synthetic", "test")
    assert a.images.shape[1:] == (1, 28, 28) and a.num_classes == 10 and te.mean == a.mean
    assert not torch.equal(a.images[: len(te)], te.images)
    # Nearest class-mean classifier from train reaches high test accuracy: the labels carry signal.
    xa, xt = a.images.flatten(1).float(), te.images.flatten(1).float()
    centroids = torch.stack([xa[a.labels == k].mean(0) for k in range(10)])
    acc = (torch.cdist(xt, centroids).argmin(1) == te.labels).float().mean()
    assert acc > 0.95


def test_unknown_names():
    assert DATASETS == ("fashion_mnist", "cifar10", "cifar100", "synthetic")
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load_dataset("mnist", "train")
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_dataset("synthetic", "val")


def test_split_holdout_disjoint_seeded():
    ds = load_dataset("synthetic", "test")
    # The noise makes every synthetic image unique, so identity by content is sound.
    keys_all = {tuple(img.flatten().tolist()) for img in ds.images}
    assert len(keys_all) == len(ds)
    rest, hold = split_holdout(ds, 100, seed=3)
    assert len(rest) == len(ds) - 100 and len(hold) == 100
    rest2, hold2 = split_holdout(ds, 100, seed=3)
    assert torch.equal(hold.images, hold2.images) and torch.equal(rest.labels, rest2.labels)
    _, hold3 = split_holdout(ds, 100, seed=4)
    assert not torch.equal(hold.images, hold3.images)
    k_rest = {tuple(img.flatten().tolist()) for img in rest.images}
    k_hold = {tuple(img.flatten().tolist()) for img in hold.images}
    assert not (k_rest & k_hold) and (k_rest | k_hold) == keys_all
    for bad in (0, len(ds)):
        with pytest.raises(DatasetError, match="n_holdout must be in"):
            split_holdout(ds, bad)


def test_array_dataset_validation():
    img = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DatasetError, match="uint8"):
        ArrayDataset("x", img.float(), torch.zeros(4, dtype=torch.long), 10, (0.5,), (0.5,))
    with pytest.raises(DatasetError, match="4 images but 3 labels"):
        ArrayDataset("x", img, torch.zeros(3, dtype=torch.long), 10, (0.5,), (0.5,))
    with pytest.raises(DatasetError, match="one value per channel"):
        ArrayDataset("x", img, torch.zeros(4, dtype=torch.long), 10, (0.5, 0.5), (0.5,))
    with pytest.raises(DatasetError, match=r"labels must lie in \[0, 10\)"):
        ArrayDataset("x", img, torch.full((4,), 10), 10, (0.5,), (0.5,))
    ds = ArrayDataset("x", img, torch.arange(4), 10, (0.5,), (0.5,))
    assert len(ds.subset(torch.tensor([1, 3]))) == 2 and ds.subset(torch.tensor([1, 3])).labels.tolist() == [1, 3]
