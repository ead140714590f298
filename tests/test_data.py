import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from relulab.data import CIFAR10_CLASSES, DataSpec, load_data, load_raw
from relulab.data.formats import read_idx
from relulab.errors import UserError

from conftest import (cifar_batch_bytes, idx_bytes, image_folder_files, write_cifar_tar, write_idx_dataset,
                      write_tar_gz, write_zip)


def test_digits_is_the_offline_default():
    splits = load_data(DataSpec())
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 1797
    assert not splits.val_is_test
    assert 0.0 <= splits.x_train.min() and splits.x_train.max() <= 1.0


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_with_the_first_n_split(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path / "fm", gz=gz)
    splits = load_data(DataSpec("fashion-mnist", path=str(tmp_path / "fm"), split="first:10"))
    assert splits.input_shape == (1, 28, 28)
    assert len(splits.y_val) == 10 and len(splits.y_train) == 50 and len(splits.y_test) == 20
    expected_val = torch.from_numpy(arrays["train-images-idx3-ubyte"][:10].astype(np.float32) / 255)
    torch.testing.assert_close(splits.x_val[:, 0], expected_val)
    assert splits.classes[0] == "T-shirt/top"


def test_dataset_found_through_relulab_data(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "mnist")
    monkeypatch.setenv("RELULAB_DATA", str(tmp_path))
    assert load_raw(DataSpec("mnist")).source == str(tmp_path / "mnist")


def test_missing_dataset_names_the_paths_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("RELULAB_DATA", str(tmp_path))
    with pytest.raises(UserError) as err:
        load_raw(DataSpec("mnist"))
    message = str(err.value)
    assert str(tmp_path / "mnist") in message and "/usr/share/datasets/mnist" in message
    assert "ossci-datasets" in message  # how to get the files


def test_truncated_and_corrupt_idx_files(tmp_path):
    good = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(UserError, match="short: IDX body has"):
        read_idx(tmp_path / "short", 3)
    (tmp_path / "magic").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(UserError, match="magic: not an IDX file"):
        read_idx(tmp_path / "magic", 3)
    (tmp_path / "dims").write_bytes(good)
    with pytest.raises(UserError, match="dims: IDX file has 3 dimensions; expected 1"):
        read_idx(tmp_path / "dims", 1)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(good)[:40])
    with pytest.raises(UserError, match="bad.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "bad.gz", 3)


def test_label_count_must_match_images(tmp_path):
    write_idx_dataset(tmp_path / "d")
    (tmp_path / "d" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz: 5 labels for 60 images"):
        load_raw(DataSpec("mnist", path=str(tmp_path / "d")))


def test_cifar_python_tarball(tmp_path):
    contents = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz")
    raw = load_raw(DataSpec("cifar10", path=str(tmp_path / "cifar-10-python.tar.gz")))
    assert raw.x_train.shape == (50, 3, 32, 32) and raw.x_test.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(raw.x_train[0].reshape(-1), contents["data_batch_1"][0][0])
    assert raw.classes == CIFAR10_CLASSES


def test_cifar_extracted_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(cifar_batch_bytes(4, i)[0])
    assert load_raw(DataSpec("cifar10", path=str(tmp_path))).x_train.shape == (20, 3, 32, 32)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/relulab-pwned",))


def test_a_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(cifar_batch_bytes(4, i)[0])
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    Path("/tmp/relulab-pwned").unlink(missing_ok=True)
    with pytest.raises(UserError, match="data_batch_3: refused to unpickle 'posix.system'"):
        load_raw(DataSpec("cifar10", path=str(folder)))
    assert not Path("/tmp/relulab-pwned").exists()


def test_wrong_shape_cifar_batch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(cifar_batch_bytes(4, i)[0])
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(UserError, match=r"test_batch: b'data' must be a uint8 array of shape \(N, 3072\)"):
        load_raw(DataSpec("cifar10", path=str(folder)))


@pytest.mark.parametrize("writer", [write_zip, write_tar_gz])
def test_image_folder_archives(tmp_path, writer):
    archive = writer(tmp_path / ("imgs.zip" if writer is write_zip else "imgs.tar.gz"), image_folder_files())
    splits = load_data(DataSpec("image-folder", path=str(archive), split="test"))
    assert splits.classes == ["cat", "dog", "frog"]
    assert splits.input_shape == (3, 8, 8) and len(splits.y_train) == 18 and len(splits.y_test) == 9
    assert splits.val_is_test
    # The second load comes from the decoded-array cache and is identical.
    again = load_data(DataSpec("image-folder", path=str(archive), split="test"))
    torch.testing.assert_close(again.x_train, splits.x_train)


def test_image_folder_directory_and_grayscale(tmp_path):
    for name, blob in image_folder_files(channels=1).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blob)
    splits = load_data(DataSpec("image-folder", path=str(tmp_path), split="first:3"))
    assert splits.input_shape == (1, 8, 8)


def test_cifar_jpeg_style_archive_loads_as_cifar10(tmp_path):
    files = image_folder_files(classes=CIFAR10_CLASSES, per_class=(2, 1), size=32)
    archive = write_tar_gz(tmp_path / "cifar10-jpeg.tar.gz", files)
    raw = load_raw(DataSpec("cifar10", path=str(archive)))
    assert raw.classes == CIFAR10_CLASSES and raw.x_train.shape == (20, 3, 32, 32)


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png", "train/../../evil.png"])
def test_archives_with_path_traversal_are_refused(tmp_path, member):
    files = image_folder_files()
    files[member] = next(iter(files.values()))
    for archive in (write_zip(tmp_path / "a.zip", files), write_tar_gz(tmp_path / "a.tar.gz", files)):
        with pytest.raises(UserError, match="refusing the archive"):
            load_raw(DataSpec("image-folder", path=str(archive)))


def test_tar_with_symlink_is_refused(tmp_path):
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        info = tarfile.TarInfo("train/cat/link.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UserError, match="link or device"):
        load_raw(DataSpec("image-folder", path=str(tmp_path / "b.tar")))


def test_corrupt_archive_and_corrupt_image(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="bad.zip"):
        load_raw(DataSpec("image-folder", path=str(tmp_path / "bad.zip")))
    files = image_folder_files()
    files["train/cat/broken.png"] = b"\x89PNG garbage"
    archive = write_zip(tmp_path / "c.zip", files)
    with pytest.raises(UserError, match="cat/broken.png: not a readable image"):
        load_raw(DataSpec("image-folder", path=str(archive)))


def test_stratified_split_keeps_class_shares():
    splits = load_data(DataSpec(split="stratified:0.2"))
    train_counts = torch.bincount(splits.y_train, minlength=10).float()
    val_counts = torch.bincount(splits.y_val, minlength=10).float()
    shares = val_counts / (train_counts + val_counts)
    assert torch.all((shares - 0.2).abs() < 0.03)
    assert len(splits.y_val) == round(0.2 * (len(splits.y_train) + len(splits.y_val)))


def test_test_split_is_flagged_and_shared():
    splits = load_data(DataSpec(split="test"))
    assert splits.val_is_test and splits.x_val is splits.x_test


def test_standardize_pad_resize_and_train_size():
    std = load_data(DataSpec(scaling="standardize"))
    assert abs(std.x_train.mean().item()) < 1e-4 and std.x_train.std().item() == pytest.approx(1, rel=1e-3)
    padded = load_data(DataSpec(image_size=12, fit="pad"))
    assert padded.input_shape == (1, 12, 12) and padded.x_train[:, :, :2].abs().sum() == 0
    resized = load_data(DataSpec(image_size=32))
    assert resized.input_shape == (1, 32, 32)
    small = load_data(DataSpec(train_size=100))
    assert len(small.y_train) == 100


def test_synthetic():
    splits = load_data(DataSpec("synthetic", options={"n": 200, "classes": 4, "size": 6, "channels": 3}))
    assert splits.input_shape == (3, 6, 6) and splits.num_classes == 4


@pytest.mark.parametrize("spec,field", [
    (DataSpec("imagenet"), "data.name"), (DataSpec(split="half"), "data.split"),
    (DataSpec(split="first:-3"), "data.split"), (DataSpec(scaling="minmax"), "data.scaling"),
    (DataSpec(image_size=0), "data.image_size"), (DataSpec(fit="crop"), "data.fit")])
def test_bad_data_specs(spec, field):
    with pytest.raises(UserError, match=f"^{field}:"):
        spec.validate()
