import pickle

import numpy as np
import pytest
import torch

import kdcourse as kd
from kdcourse.data import TensorLoader, load_torchvision


@pytest.mark.parametrize("name,shape,n_train,n_test", [
    ("mnist", (1, 28, 28), 4000, 1000), ("mnist1d", (1, 40), 4000, 1000), ("digits", (1, 8, 8), 1437, 360)])
def test_load_dataset_shapes_and_standardisation(name, shape, n_train, n_test):
    d = kd.load_dataset(name)
    assert d.in_shape == shape and len(d.x_train) == n_train and len(d.x_test) == n_test
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3
    assert set(d.y_train.tolist()) == set(range(10))


def test_mnist_split_is_stratified_and_seeded():
    a, b, c = kd.load_dataset("mnist"), kd.load_dataset("mnist"), kd.load_dataset("mnist", seed=1)
    assert torch.equal(a.x_test, b.x_test) and not torch.equal(a.x_test, c.x_test)
    assert a.y_test.bincount().tolist() == [100] * 10


def test_subset_and_unlabeled_pool():
    d = kd.load_dataset("mnist1d", n_train=500, n_unlabeled=300)
    assert len(d.x_train) == 500 and d.x_unlabeled.shape == (300, 1, 40)
    assert d.y_unlabeled.shape == (300,) and set(d.y_unlabeled.tolist()) == set(range(10))
    assert min(d.y_train.bincount().tolist()) >= 45  # stratified
    # the pool is new data, not a copy of the train split
    assert not any(torch.equal(d.x_unlabeled[0], x) for x in d.x_train)


def test_mnist1d_cache_is_verified_and_rebuilt(tmp_path):
    kd.load_dataset("mnist1d", cache_dir=tmp_path)
    npz = next(tmp_path.glob("*.npz"))
    good = npz.read_bytes()
    npz.write_bytes(good[:100])  # truncate: checksum no longer matches
    d = kd.load_dataset("mnist1d", cache_dir=tmp_path)
    assert len(d.x_train) == 4000 and npz.read_bytes() == good


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*mnist"):
        kd.load_dataset("cifar")
    with pytest.raises(ValueError, match="load_torchvision"):
        kd.load_dataset("cifar10")
    with pytest.raises(ValueError, match="only available for 'mnist1d'"):
        kd.load_dataset("mnist", n_unlabeled=10)
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        kd.load_dataset("digits", n_train=5)


def test_unwritable_cache_dir_names_the_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="KDCOURSE_DATA"):
        kd.load_dataset("mnist1d", cache_dir=blocker / "cache")


def test_tensor_loader_batches_and_reshuffles():
    x, y = torch.arange(10).float(), torch.arange(10)
    loader = TensorLoader(x, y, batch_size=4, seed=3)
    first, second = list(loader), list(loader)
    assert len(loader) == 3 and [len(b[0]) for b in first] == [4, 4, 2]
    assert torch.equal(torch.cat([b[0] for b in first]).sort().values, x)
    assert not torch.equal(first[0][0], second[0][0])  # a new order each epoch
    assert torch.equal(list(TensorLoader(x, y, batch_size=4, seed=3))[0][0], first[0][0])
    with pytest.raises(ValueError, match="differ in length"):
        TensorLoader(x, y[:5])
    with pytest.raises(ValueError, match="empty"):
        TensorLoader(x[:0])


def _write_fashion(root, n):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("t10k", n // 2)):
        imgs = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        # IDX format: magic (0x0803 images / 0x0801 labels), sizes big-endian, then bytes
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            np.array([0x803, count, 28, 28], ">i4").tobytes() + imgs.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(np.array([0x801, count], ">i4").tobytes() + labels.tobytes())


def test_fashionmnist_loader_on_tiny_files(tmp_path):
    _write_fashion(tmp_path, 40)
    d = load_torchvision("fashionmnist", root=tmp_path)
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert d.classes[0] == "T-shirt/top" and abs(float(d.x_train.mean())) < 1e-4


def test_cifar10_loader_on_tiny_files(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(range(4))}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"]}, f)
    # torchvision checks each file's md5 against the real release; our tiny files differ.
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    d = load_torchvision("cifar10", root=tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.classes[3] == "cat"


def test_torchvision_missing_files_say_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_torchvision("fashionmnist", root=tmp_path)
    with pytest.raises(ValueError, match="choose one of"):
        load_torchvision("imagenet", root=tmp_path)


def test_generating_mnist1d_leaves_the_global_random_states_alone(tmp_path):
    import random
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    kd.load_dataset("mnist1d", n_unlabeled=20, cache_dir=tmp_path)   # cold cache: generated now
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1]) and torch.equal(torch.get_rng_state(), states[2])


def test_dataset_loaders_and_description():
    d = kd.load_dataset("digits", n_train=200)
    assert d.n_classes == 10 and d.in_shape == (1, 8, 8)
    assert repr(d) == "Dataset('digits', train=200, test=360, unlabeled=0, in_shape=(1, 8, 8), classes=10)"
    test = list(d.test_loader(batch_size=100))
    assert [len(b[0]) for b in test] == [100, 100, 100, 60]
    assert torch.equal(torch.cat([b[0] for b in test]), d.x_test)     # in order, nothing dropped
    train = list(d.train_loader(64, seed=1))
    xs, ys = torch.cat([b[0] for b in train]), torch.cat([b[1] for b in train])
    order = torch.randperm(200, generator=torch.Generator().manual_seed(1))   # epoch 0 uses seed + 0
    assert torch.equal(xs, d.x_train[order]) and torch.equal(ys, d.y_train[order])
    assert list(d.train_loader(64, shuffle=False))[0][1].tolist() == d.y_train[:64].tolist()
    assert d.mean == pytest.approx(float(kd.load_dataset("digits", n_train=200, standardize=False).x_train.mean()))


def test_tensor_loader_drop_last_and_batch_size():
    x = torch.arange(10).float()
    assert [len(b[0]) for b in TensorLoader(x, batch_size=4, drop_last=True, shuffle=False)] == [4, 4]
    assert len(TensorLoader(x, batch_size=4, drop_last=True)) == 2
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TensorLoader(x, batch_size=0)
    with pytest.raises(ValueError, match="at least one tensor"):
        TensorLoader()
    assert kd.data.DATASETS == tuple(kd.data.INPUT_SHAPES) and "cifar10" in kd.data.TORCHVISION_DATASETS
