import gzip
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch

from relulab.data import CIFAR10_CLASSES, DataSpec, load_data, load_raw
from relulab.data.formats import read_idx
from relulab.core import images
from relulab.core.errors import UserError
from relulab.core.images import decode_images

from conftest import (cifar_batch_bytes, idx_bytes, image_folder_files, write_cifar_tar, write_idx_dataset,
                      write_tar_gz, write_zip)


def test_digits_is_the_offline_default():
    splits = load_data(DataSpec())
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 1797
    assert not splits.val_is_test
    assert 0.0 <= splits.x_train.min() and splits.x_train.max() <= 1.0


def test_digits_are_scikit_learns_read_without_importing_it():
    import subprocess
    import sys

    import relulab
    from sklearn.datasets import load_digits

    from relulab.data import _digits_arrays

    gray, target = _digits_arrays()
    digits = load_digits()
    assert gray.dtype == digits.images.dtype and target.dtype == digits.target.dtype
    np.testing.assert_array_equal(gray, digits.images)
    np.testing.assert_array_equal(target, digits.target)
    src = str(Path(relulab.__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", "import sys; from relulab.data import DataSpec, load_data; "
                           "load_data(DataSpec()); print('sklearn' in sys.modules)"],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": src})
    assert done.stdout.strip() == "False"  # scikit-learn's import (about a second, scipy with it) is not paid


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


def test_an_explicit_path_is_the_only_place_looked_at(tmp_path, monkeypatch):
    """A --data-path that does not hold the files is an error naming it, even where the standard places hold
    them: never a quiet fall back to another copy of the data."""
    monkeypatch.setenv("RELULAB_DATA", str(tmp_path / "data"))
    write_idx_dataset(tmp_path / "data" / "fashion-mnist")
    assert len(load_raw(DataSpec("fashion-mnist")).y_train) > 0  # found in $RELULAB_DATA without a path
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"files not found in {tmp_path / 'empty'};"):
        load_raw(DataSpec("fashion-mnist", path=str(tmp_path / "empty")))
    with pytest.raises(UserError, match=f"^data.path: {tmp_path / 'missing'} does not exist$"):
        load_raw(DataSpec("cifar10", path=str(tmp_path / "missing")))


def test_a_broken_image_in_a_split_left_unused_does_not_stop_the_load(tmp_path):
    """Images decode as the archive is read, before it is known which test-like split is used; test wins over
    val, so val's broken image is never looked at, as before decoding streamed."""
    files = image_folder_files()
    files["val/cat/broken.png"] = b"\x89PNG garbage"
    raw = load_raw(DataSpec("image-folder", path=str(write_tar_gz(tmp_path / "v.tar.gz", files))))
    assert len(raw.y_test) == 9


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


# ---------------------------------------------------------------- the decoded-data cache (issue 18)


def _write_folder(root: Path, files: dict) -> Path:
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    return root


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache dir of this test's own, so that the files in it are this test's."""
    monkeypatch.setenv("RELULAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "decoded"


def _folder_spec(root: Path) -> DataSpec:
    return DataSpec("image-folder", path=str(root), split="test")


@pytest.mark.parametrize("change", ["add an image", "add a class", "delete an image", "rewrite an image"])
def test_a_changed_folder_is_decoded_again(tmp_path, private_cache, change):
    root = _write_folder(tmp_path / "imgs", image_folder_files())
    first = load_raw(_folder_spec(root))
    assert first.cache["hit"] is False and Path(first.cache["file"]).parent == private_cache
    assert load_raw(_folder_spec(root)).cache["hit"] is True  # unchanged: the cache serves it
    root_stat = root.stat()
    other = image_folder_files(seed=1)["train/cat/000.png"]
    if change == "add an image":
        (root / "train/cat/999.png").write_bytes(other)
    elif change == "add a class":
        _write_folder(root, {"train/zebra/000.png": other})
    elif change == "delete an image":
        (root / "train/dog/002.png").unlink()
    else:
        (root / "train/cat/000.png").write_bytes(other)
    assert root.stat().st_mtime_ns == root_stat.st_mtime_ns  # the root itself looks the same
    again = load_raw(_folder_spec(root))
    assert again.cache["hit"] is False
    fresh = load_image_folder_uncached(root)
    assert again.classes == fresh.classes
    np.testing.assert_array_equal(again.x_train, fresh.x_train)
    np.testing.assert_array_equal(again.y_train, fresh.y_train)
    expected = {"add an image": 19, "add a class": 19, "delete an image": 17, "rewrite an image": 18}[change]
    assert len(again.y_train) == expected
    assert load_raw(_folder_spec(root)).cache["hit"] is True


def load_image_folder_uncached(root: Path):
    """What the folder holds now, decoded without any cache (a fresh, empty cache dir)."""
    import tempfile

    with tempfile.TemporaryDirectory() as cache, pytest.MonkeyPatch.context() as patch:
        patch.setenv("RELULAB_CACHE", cache)
        return load_raw(_folder_spec(root))


def test_a_rewritten_archive_is_a_cache_miss_even_with_its_size_and_mtime(tmp_path, private_cache):
    files = image_folder_files()
    archive = write_zip(tmp_path / "imgs.zip", files)
    first = load_raw(DataSpec("image-folder", path=str(archive)))
    stat = archive.stat()
    # The same members under swapped class names: same size, other content; then the old mtime back.
    swapped = {name.replace("/cat/", "/tmp/").replace("/dog/", "/cat/").replace("/tmp/", "/dog/"): blob
               for name, blob in files.items()}
    write_zip(archive, swapped)
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert archive.stat().st_size == stat.st_size and archive.stat().st_mtime_ns == stat.st_mtime_ns
    again = load_raw(DataSpec("image-folder", path=str(archive)))
    assert again.cache["hit"] is False and again.cache["file"] != first.cache["file"]
    cats, dogs = (first.y_train == 0), (first.y_train == 1)
    np.testing.assert_array_equal(again.x_train[again.y_train == 1], first.x_train[cats])
    np.testing.assert_array_equal(again.x_train[again.y_train == 0], first.x_train[dogs])


def test_idx_files_are_cached_and_a_rewritten_file_is_decoded_again(tmp_path, private_cache):
    folder = tmp_path / "fm"
    write_idx_dataset(folder)
    spec = DataSpec("fashion-mnist", path=str(folder), split="first:10")
    fresh, cached = load_data(spec), load_data(spec)
    assert fresh.cache["hit"] is False and Path(fresh.cache["file"]).parent == private_cache
    assert cached.cache == {"file": fresh.cache["file"], "hit": True}
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(fresh, name), getattr(cached, name)), name
    assert cached.classes == fresh.classes and cached.source == fresh.source == str(folder)
    # The same folder as MNIST: other class names, another cache file.
    assert load_raw(DataSpec("mnist", path=str(folder))).cache["file"] != fresh.cache["file"]
    new = write_idx_dataset(folder, seed=1)  # same sizes (random bytes do not compress), other pixels
    for file in folder.iterdir():  # a later mtime, as a rewrite has, even where the file clock is coarse
        info = file.stat()
        os.utime(file, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    again = load_data(spec)
    assert again.cache["hit"] is False
    expected = torch.from_numpy(new["train-images-idx3-ubyte"][:10].astype(np.float32) / 255)
    torch.testing.assert_close(again.x_val[:, 0], expected)


def test_the_run_summary_says_whether_the_cache_was_used(tmp_path, private_cache):
    archive = write_zip(tmp_path / "imgs.zip", image_folder_files())
    spec = DataSpec("image-folder", path=str(archive), split="test")
    fresh, cached = load_data(spec).summary(), load_data(spec).summary()
    assert fresh["cache"]["hit"] is False and cached["cache"]["hit"] is True
    assert fresh["cache"]["file"] == cached["cache"]["file"] and Path(cached["cache"]["file"]).is_file()
    assert load_data(DataSpec()).summary()["cache"] is None  # digits: nothing cached
    assert set(fresh) == {"dataset", "source", "input_shape", "classes", "train", "val", "test", "val_is_test",
                          "cache"}


def _damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_not_a_zip(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 this is not an npz")


def _damage_lone_array(path: Path) -> None:
    np.save(path.with_suffix(".npy"), np.zeros(3))
    path.with_suffix(".npy").replace(path)


def _damage_missing_array(path: Path) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "y_test"}
    np.savez(path, **arrays)


def _damage_shapes(path: Path) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["y_train"] = arrays["y_train"][:-1]
    np.savez(path, **arrays)


def _damage_test_shape(path: Path) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_test"] = arrays["x_test"][:, :, :4]
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_not_a_zip, _damage_lone_array, _damage_missing_array,
                                    _damage_shapes, _damage_test_shape])
def test_a_damaged_cache_file_is_named_deleted_and_rebuilt(tmp_path, private_cache, capsys, damage):
    archive = write_zip(tmp_path / "imgs.zip", image_folder_files())
    spec = DataSpec("image-folder", path=str(archive))
    good = load_raw(spec)
    cache_file = Path(good.cache["file"])
    damage(cache_file)
    capsys.readouterr()
    again = load_raw(spec)
    err = capsys.readouterr().err
    assert err.startswith(f"relulab: warning: decoded-data cache {cache_file} is damaged (")
    assert err.endswith("); rebuilding it\n") and err.count("\n") == 1, err
    assert again.cache["hit"] is False
    np.testing.assert_array_equal(again.x_train, good.x_train)
    np.testing.assert_array_equal(again.y_test, good.y_test)
    assert load_raw(spec).cache["hit"] is True  # rebuilt: the next load reads it again


# ---------------------------------------------------------------- what a loader returns must agree (issue 18)


def test_train_and_test_images_of_different_shapes_are_refused_at_load(tmp_path):
    write_idx_dataset(tmp_path / "d")
    small = write_idx_dataset(tmp_path / "small", size=14)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "d" / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(small[stem])))
    with pytest.raises(UserError) as err:
        load_raw(DataSpec("mnist", path=str(tmp_path / "d")))
    assert str(err.value) == (f"{tmp_path / 'd'}: test images are 1x14x14 (channels x height x width), training "
                              "images 1x28x28; they must be the same")


def test_images_and_labels_must_agree_whatever_the_loader(monkeypatch):
    from relulab import data

    def uneven(spec):
        x = np.zeros((10, 1, 4, 4), np.uint8)
        return data.RawDataset(x, np.arange(10) % 2, x, np.arange(9) % 2, ["a", "b"], "uneven-source")

    monkeypatch.setitem(data.LOADERS, "digits", uneven)
    with pytest.raises(UserError, match="^uneven-source: 9 test labels for 10 test images$"):
        load_raw(DataSpec())


def test_a_single_class_is_refused(tmp_path):
    archive = write_zip(tmp_path / "one.zip", image_folder_files(classes=("cat",)))
    with pytest.raises(UserError) as err:
        load_raw(DataSpec("image-folder", path=str(archive)))
    assert str(err.value) == (f"{archive}: only one class (cat) in the training data; a classifier needs at least 2")
    idx = write_idx_dataset(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(len(idx["train-labels-idx1-ubyte"]), 3, np.uint8))))
    with pytest.raises(UserError, match=r"only one class \(3\) in the training data"):
        load_raw(DataSpec("mnist", path=str(tmp_path / "m")))


def test_a_class_left_without_training_examples_still_loads(tmp_path):
    files = image_folder_files()
    archive = write_zip(tmp_path / "imgs.zip", files)
    splits = load_data(DataSpec("image-folder", path=str(archive), split="first:6"))  # the six cats validate
    assert 0 not in splits.y_train.tolist() and set(splits.y_val.tolist()) == {0}
    assert splits.num_classes == 3


# ---------------------------------------------------------------- decompression bombs (issue 18)


def test_an_image_over_pillows_pixel_limit_is_refused_by_name(tmp_path, monkeypatch, private_cache):
    from PIL import Image

    files = image_folder_files()  # 8 x 8 = 64 pixels each
    archive = write_zip(tmp_path / "imgs.zip", files)
    for limit in (20, 63):  # 64 > 2 x 20: Pillow's error; 63 < 64 <= 2 x 63: only Pillow's warning
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(UserError) as err:
            load_raw(DataSpec("image-folder", path=str(archive)))
        assert str(err.value) == (f"{archive}:cat/000.png: image of 8 x 8 pixels exceeds the decompression-bomb "
                                  f"limit of {limit} pixels")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64)
    assert load_raw(DataSpec("image-folder", path=str(archive))).x_train.shape == (18, 3, 8, 8)


# ---------------------------------------------------------------- data.options (issue 18)


@pytest.mark.parametrize("name,options,message", [
    ("synthetic", {"nosie": 3}, "data.options.nosie: unknown option for synthetic (did you mean 'noise'?); expected "
                                "one of: channels, classes, n, noise, size"),
    ("synthetic", {"m": 300}, "data.options.m: unknown option for synthetic; expected one of: channels, classes,"),
    ("synthetic", {"sizes": 4}, "data.options.sizes: unknown option for synthetic (did you mean 'size'?)"),
    ("synthetic", {"n": 300.7}, "data.options.n: expected an integer >= 2, got 300.7"),
    ("synthetic", {"n": 300.0}, "data.options.n: expected an integer >= 2, got 300.0"),
    ("synthetic", {"classes": "x"}, "data.options.classes: expected an integer >= 2, got 'x'"),
    ("synthetic", {"channels": True}, "data.options.channels: expected an integer >= 1, got True"),
    ("synthetic", {"size": 0}, "data.options.size: expected an integer >= 1, got 0"),
    ("synthetic", {"noise": "loud"}, "data.options.noise: expected a number >= 0, got 'loud'"),
    ("synthetic", {"noise": float("nan")}, "data.options.noise: expected a number >= 0, got nan"),
    ("synthetic", {"noise": float("inf")}, "data.options.noise: expected a number >= 0, got inf"),
    ("digits", {"n": 10}, "data.options.n: unknown option for digits; expected no options"),
    ("image-folder", {"n": 10}, "data.options.n: unknown option for image-folder; expected no options"),
])
def test_data_options_are_checked_before_anything_loads(name, options, message):
    with pytest.raises(UserError) as err:
        DataSpec(name, path="x.zip" if name == "image-folder" else None, options=options).validate()
    assert str(err.value).startswith(message), str(err.value)


def test_synthetic_options_mean_what_they_say():
    raw = load_raw(DataSpec("synthetic", options={"n": 300, "classes": 3, "size": 5, "channels": 2, "noise": 0}))
    assert len(raw.y_train) + len(raw.y_test) == 300 and raw.x_train.shape[1:] == (2, 5, 5)
    assert raw.classes == ["class0", "class1", "class2"]
    with pytest.raises(UserError, match=r"^data.options.n: synthetic needs n >= 2 \* classes"):
        load_raw(DataSpec("synthetic", options={"n": 5, "classes": 3}))


# ---------------------------------------------------------------- sizes that cannot be allocated (issue 18)


def test_sizes_that_cannot_fit_in_memory_are_refused_before_allocating(monkeypatch):
    from relulab.core import util

    monkeypatch.setattr(util, "memory_available", lambda: 1 << 30)  # 1 GiB, whatever this machine has
    with pytest.raises(UserError, match=r"^data.image_size: 1797 images of 1x100000x100000 float32 would need "
                                        r"[0-9.]+ TiB of memory; this machine has 1.0 GiB available$"):
        load_data(DataSpec(image_size=100000))
    with pytest.raises(UserError, match=r"^data.options: synthetic data of 100000000000 images of 1x8x8 would "
                                        r"need [0-9.]+ TiB of memory; this machine has 1.0 GiB available$"):
        load_data(DataSpec("synthetic", options={"n": 100_000_000_000}))
    with pytest.raises(UserError, match=r"^data.options: synthetic data of 1200 images of 3x30000x30000 "):
        load_data(DataSpec("synthetic", options={"size": 30000, "channels": 3}))
    assert load_data(DataSpec(image_size=64)).input_shape == (1, 64, 64)  # 1797 x 64 x 64 x 4 bytes fit


# ---------------------------------------------------------------- splits and sizes that mean nothing (issue 18)


@pytest.mark.parametrize("split", ["stratified:1.0", "first:5.0", "stratified:300.0", "first:1e3"])
def test_a_whole_number_with_a_decimal_point_is_an_ambiguous_split(split):
    with pytest.raises(UserError) as err:
        DataSpec(split=split).validate()
    kind, amount = split.split(":")
    assert str(err.value) == (f"data.split: {split} is ambiguous: a fraction must be below 1 ({kind}:0.1), a count "
                              f"is a whole number without a decimal point ({kind}:500)")


@pytest.mark.parametrize("split", ["first:0.5", "first:0.1"])
def test_first_takes_a_count(split):
    with pytest.raises(UserError, match="^data.split: first:N takes a count of images"):
        DataSpec(split=split).validate()


def test_fraction_and_count_splits_still_work():
    assert len(load_data(DataSpec(split="stratified:300")).y_val) == 300
    assert len(load_data(DataSpec(split="first:5")).y_val) == 5
    assert len(load_data(DataSpec(split="stratified:1")).y_val) == 1


def test_a_train_size_above_the_training_split_is_refused():
    whole = len(load_data(DataSpec()).y_train)  # 1294 of digits' 1437 training images after the 10% split
    assert len(load_data(DataSpec(train_size=whole)).y_train) == whole
    with pytest.raises(UserError) as err:
        load_data(DataSpec(train_size=whole + 1))
    assert str(err.value) == (f"data.train_size: {whole + 1} is more than the {whole} training examples the split "
                              "leaves")


# ---------------------------------------------------------------- data.path for built-in datasets (issue 18)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_a_path_for_a_built_in_dataset_is_refused(name):
    with pytest.raises(UserError) as err:
        DataSpec(name, path="/some/where").validate()
    assert str(err.value) == f"data.path: {name} is built in and reads no files; leave data.path out"


def test_the_decoding_workers_start_without_torch():
    """A spawned worker imports the module its function is in, with its packages: relulab.core.images must not
    bring torch (1.7 s a process)."""
    code = "import sys, relulab.core.images; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


CONSOLE_SCRIPT_MAIN = """
import sys
from relulab.__main__ import main  # what the `relulab` console script imports
import multiprocessing


def torch_in_worker():
    return "torch" in sys.modules


if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print(pool.apply(torch_in_worker))
"""


def test_workers_spawned_under_the_console_script_start_without_torch(tmp_path):
    """A spawned worker re-runs the main script's imports: the console entry point (pyproject's
    relulab.__main__:main) imports the CLI, and torch with it, only when it runs."""
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '\nrelulab = "relulab.__main__:main"\n' in pyproject  # [project.scripts] (tomllib is 3.11's only)
    script = tmp_path / "relulab_script.py"
    script.write_text(CONSOLE_SCRIPT_MAIN)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_images_decode_the_same_on_worker_processes_and_errors_still_name_the_file():
    """Many images decode on worker processes (relulab.core.images; threads barely help small JPEGs), in chunks
    sent as an iterator yields them: the same arrays, in the same order, as on threads, and a bad image's error
    crosses back naming the file, raised or returned in its place."""
    files = image_folder_files()
    items = [(blob, name) for name, blob in sorted(files.items())]
    on_threads = decode_images(items, processes=0)
    with patch.object(images, "CHUNK_IMAGES", 3):  # several chunks from the few test images
        on_processes = decode_images(iter(items), processes=2)
        assert len(on_processes) == len(items)
        assert all(np.array_equal(a, b) for a, b in zip(on_threads, on_processes))
        broken = items[:4] + [(b"\x89PNG garbage", "x/broken.png")] + items[4:]
        with pytest.raises(UserError, match="x/broken.png: not a readable image"):
            decode_images(broken, processes=2)
        returned = decode_images(iter(broken), processes=2, errors="return")
    assert isinstance(returned[4], UserError) and "x/broken.png" in str(returned[4])
    assert all(np.array_equal(a, b) for a, b in zip(returned[:4] + returned[5:], on_threads))
