"""Image sources: deterministic order, exact shard split, resume, folder labels and bad files, tfds without a download.

The tfds tests need tensorflow-datasets (the ``data`` extra) but not TensorFlow: a tiny dataset is prepared locally
as array_record from PNG bytes (nothing fetched), and tfds.testing.mock_data stands in for imagenette/imagenet2012.
"""

import io
import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image

import jaxcam
from jaxcam.data import resize
from jaxcam.datasets import (DatasetNotPreparedError, ImageSource, as_source, folder_source, get_source,
                             sample_source, tfds_source)


def _all(source: ImageSource, batch_size=3, **kw):
    """Every batch of a run, concatenated."""
    out = list(source.batches(batch_size, size=kw.pop("size", 16), **kw))
    assert all(len(b["id"]) == batch_size for b in out[:-1]) and (not out or 0 < len(out[-1]["id"]) <= batch_size)
    if not out:
        return {"id": np.array([]), "index": np.array([], np.int64), "image": np.zeros((0, 16, 16, 3)),
                "label": np.array([], np.int64)}
    return {k: np.concatenate([b[k] for b in out]) for k in out[0]}


def _check_shards_and_resume(source: ImageSource, n: int):
    full = _all(source)
    assert list(full["index"]) == list(range(n))
    for count in (1, 2, 3, 5):
        parts = [_all(source, shard=(i, count)) for i in range(count)]
        got = sorted(p for part in parts for p in part["index"])
        assert got == list(range(n)), count  # every position exactly once across the shards
        for i, part in enumerate(parts):
            assert all(p % count == i for p in part["index"])
            assert list(part["index"]) == list(source.positions(shard=(i, count)))
            np.testing.assert_array_equal(part["image"], full["image"][part["index"]])
            np.testing.assert_array_equal(part["id"], full["id"][part["index"]])
    # resume: start/stop are positions of the whole source, before sharding
    head, tail = _all(source, stop=2), _all(source, start=2)
    np.testing.assert_array_equal(np.concatenate([head["id"], tail["id"]]), full["id"])
    np.testing.assert_array_equal(np.concatenate([head["image"], tail["image"]]), full["image"])
    mid = _all(source, start=1, stop=n - 1, shard=(1, 2))
    assert list(mid["index"]) == [p for p in range(1, n - 1) if p % 2 == 1]
    # resume by ids: skipped items are replaced, batches stay full
    skip = set(full["id"][::2].tolist())
    rest = _all(source, skip_ids=skip)
    assert list(rest["id"]) == [i for i in full["id"].tolist() if i not in skip]
    assert _all(source, start=n + 5)["id"].size == 0
    return full


# ---------------------------------------------------------------------------------------------------- sample


def test_sample_source_batches():
    src = sample_source()
    assert len(src) == 4 and src.name == "sample"
    batches = list(src.batches(3, size=32))
    assert [len(b["id"]) for b in batches] == [3, 1]  # the last batch holds the remainder
    b = batches[0]
    assert list(b["id"]) == ["chelsea", "coffee", "astronaut"]
    assert b["image"].shape == (3, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int64 and (b["label"] == -1).all() and b["index"].dtype == np.int64
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
    cat = jaxcam.sample_images(["chelsea"])["chelsea"]
    np.testing.assert_array_equal(b["image"][0], resize(cat, 32))
    crop = next(src.batches(1, size=32, resize_mode="center_crop"))["image"][0]
    np.testing.assert_array_equal(crop, resize(cat, 32, "center_crop"))
    again = list(src.batches(3, size=32, workers=3))
    for x, y in zip(batches, again):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_sample_source_shards_and_resume():
    _check_shards_and_resume(sample_source(), 4)


def test_bad_arguments_are_named():
    src = sample_source(["coffee", "rocket"])
    assert src.name == "sample:coffee,rocket"
    for kwargs, word in [({"shard": (2, 2)}, "shard"), ({"shard": 3}, "shard"), ({"start": -1}, "start"),
                         ({"start": 2, "stop": 1}, "stop"), ({"resize_mode": "zoom"}, "resize_mode"),
                         ({"size": 0}, "size")]:
        with pytest.raises(ValueError, match=word):
            src.batches(2, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        src.batches(0)
    with pytest.raises(jaxcam.ImageFileError, match="nope"):
        sample_source(["nope"])
    for kwargs in ({"shard": (2, 2)}, {"start": -1}, {"size": 0}, {"workers": -1}):  # one typed error, named
        with pytest.raises(jaxcam.InvalidArgumentError, match=next(iter(kwargs))):
            src.batches(2, **kwargs)
    with pytest.raises(jaxcam.EmptySourceError, match="names is empty"):
        sample_source([])
    for obj in (None, 3, b"bytes", pathlib.Path("images")):
        with pytest.raises(jaxcam.InvalidArgumentError, match="source must be an ImageSource"):
            as_source(obj)

def test_get_source_specs(tmp_path):
    assert get_source("sample").name == "sample"
    assert get_source("sample:coffee").names == ("coffee",)
    src = sample_source()
    assert get_source(src) is src
    with pytest.raises(jaxcam.UnknownNameError, match="'ftp'.*'sample', 'folder', 'tfds'"):
        get_source("ftp://x")
    with pytest.raises(ValueError, match="folder:PATH"):
        get_source("folder:")
    with pytest.raises(jaxcam.ImageFileError, match="not found"):
        get_source(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(TypeError):
        get_source(3)


# ---------------------------------------------------------------------------------------------------- folder


def _image(seed, shape=(20, 24)):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    for cls, seeds in (("dog", (0, 1)), ("cat", (2, 3, 4))):
        (root / cls).mkdir(parents=True)
        for s in seeds:
            ext = "png" if s % 2 else "JPG"
            Image.fromarray(_image(s, (20 + s, 24))).save(root / cls / f"img{s}.{ext}",
                                                         format="PNG" if ext == "png" else "JPEG")
    (root / "cat" / "deeper").mkdir()
    Image.fromarray(_image(5)).save(root / "cat" / "deeper" / "img5.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / "cat" / "labels.csv").write_text("a,b\n")
    return root


def test_folder_source_order_labels_and_pixels(image_folder):
    src = folder_source(image_folder)
    ids = ["cat/deeper/img5.png", "cat/img2.JPG", "cat/img3.png", "cat/img4.JPG", "dog/img0.JPG", "dog/img1.png"]
    assert src.classes == ("cat", "dog") and len(src) == 6
    full = _check_shards_and_resume(src, 6)
    assert list(full["id"]) == ids
    assert list(full["label"]) == [0, 0, 0, 0, 1, 1]
    png = np.asarray(Image.open(image_folder / "cat" / "img3.png"))
    np.testing.assert_array_equal(full["image"][2], resize(png.astype(np.float32) / 255, 16))
    unlabeled = _all(folder_source(image_folder, labels_from=None, extensions=(".png",)))
    assert list(unlabeled["id"]) == ["cat/deeper/img5.png", "cat/img3.png", "dog/img1.png"]
    assert (unlabeled["label"] == -1).all()


def test_folder_source_corrupt_file(image_folder):
    (image_folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    src = folder_source(image_folder)
    with pytest.raises(jaxcam.ImageFileError, match="broken.png"):
        _all(src)
    head = _all(src, stop=4)  # items before the broken file still load
    assert len(head["id"]) == 4
    skipping = folder_source(image_folder, on_error="skip")
    with pytest.warns(UserWarning, match="broken.png"):
        out = _all(skipping, batch_size=4)
    assert "dog/broken.png" not in out["id"] and len(out["id"]) == 6
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on_skip replaces the warning
        again = _all(skipping, batch_size=4, on_skip=lambda p, i, e: seen.append((p, i, type(e))))
    assert seen == [(4, "dog/broken.png", seen[0][2])] and issubclass(seen[0][2], jaxcam.ImageFileError)
    np.testing.assert_array_equal(again["image"], out["image"])
    with pytest.raises(jaxcam.UnknownNameError, match="on_error"):
        folder_source(image_folder, on_error="ignore")


def test_folder_source_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(jaxcam.ImageFileError, match="no image files"):
        folder_source(tmp_path)
    with pytest.raises(jaxcam.EmptySourceError, match="the source is empty"):
        folder_source(tmp_path)


# ---------------------------------------------------------------------------------------------------- tfds


def _png(seed):
    buf = io.BytesIO()
    Image.fromarray(_image(seed, (10 + seed, 12))).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core import registered

    if "jaxcam_tiny_images" not in registered.list_imported_builders():

        class JaxcamTinyImages(tfds.core.GeneratorBasedBuilder):
            """7 validation images (file_name ids, 3 classes); train holds one corrupt image."""

            # A top-level module name: for a class in a package, tfds 4.9.10 reaches for importlib_resources,
            # which it does not install on Python >= 3.9.
            __module__ = "jaxcam_tiny_images"
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    "file_name": tfds.features.Text()}))

            def _split_generators(self, dl_manager):
                return {"validation": self._generate_examples(range(7)), "train": self._generate_examples(range(7, 10))}

            def _generate_examples(self, seeds):
                for s in seeds:  # encoded bytes: preparing needs no TensorFlow
                    image = b"not a png" if s == 8 else _png(s)
                    yield s, {"image": image, "label": s % 3, "file_name": f"img{s}.png"}

    return tfds


def test_tfds_not_prepared_never_downloads(tfds, tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="download=True"):
        tfds_source("jaxcam_tiny_images", data_dir=tmp_path)


def test_tfds_array_record_without_tensorflow(tfds, tmp_path):
    src = tfds_source("jaxcam_tiny_images", data_dir=tmp_path, download=True)  # local builder: fetches nothing
    assert len(src) == 7 and src.classes == ("a", "b", "c") and src.id_key == "file_name"
    full = _check_shards_and_resume(src, 7)
    assert sorted(full["id"]) == sorted(f"img{s}.png" for s in range(7))
    for item_id, label, image in zip(full["id"], full["label"], full["image"]):
        seed = int(item_id[3:-4])
        assert label == seed % 3
        np.testing.assert_array_equal(image, resize(_image(seed, (10 + seed, 12)).astype(np.float32) / 255, 16))
    again = get_source("tfds:jaxcam_tiny_images:validation", data_dir=tmp_path)  # prepared: download=False reads
    np.testing.assert_array_equal(_all(again)["id"], full["id"])
    by_index = _all(tfds_source("jaxcam_tiny_images", data_dir=tmp_path, id_key=None))
    np.testing.assert_array_equal(by_index["id"], np.arange(7))
    assert by_index["id"].dtype == np.int64
    np.testing.assert_array_equal(by_index["image"], full["image"])
    assert (_all(tfds_source("jaxcam_tiny_images", data_dir=tmp_path, label_key=None))["label"] == -1).all()
    with pytest.raises(jaxcam.UnknownNameError, match="'file_name', 'image', 'label'|'image', 'label'"):
        tfds_source("jaxcam_tiny_images", data_dir=tmp_path, image_key="img")


def test_tfds_corrupt_example(tfds, tmp_path):
    tfds_source("jaxcam_tiny_images", data_dir=tmp_path, download=True)
    src = tfds_source("jaxcam_tiny_images", split="train", data_dir=tmp_path, id_key=None)
    with pytest.raises(jaxcam.ImageFileError, match="tfds:jaxcam_tiny_images:train"):
        _all(src)
    skipping = tfds_source("jaxcam_tiny_images", split="train", data_dir=tmp_path, on_error="skip")
    with pytest.warns(UserWarning, match="skipping item"):
        out = _all(skipping)
    assert sorted(out["id"]) == ["img7.png", "img9.png"]


def test_tfds_tfrecord_needs_tensorflow(tfds, tmp_path, monkeypatch):
    """A dataset with no random access (prepared as tfrecord) streams through tf.data, or says what to install."""
    import jaxcam.datasets as ds

    tfds_source("jaxcam_tiny_images", data_dir=tmp_path, download=True)
    builder_cls = type(tfds.builder("jaxcam_tiny_images", data_dir=tmp_path))

    def no_random_access(self, *a, **k):
        raise NotImplementedError("Random access data source for file format FileFormat.TFRECORD is not supported.")

    monkeypatch.setattr(builder_cls, "as_data_source", no_random_access)
    monkeypatch.setattr(ds, "_have_tensorflow", lambda: False)
    src = tfds_source("jaxcam_tiny_images", data_dir=tmp_path)
    assert len(src) == 7  # from the dataset info
    with pytest.raises(jaxcam.MissingDependencyError, match="tensorflow-cpu.*array_record"):
        _all(src)


def test_tfds_tfrecord_streams_with_tensorflow(tfds, tmp_path):
    """tfds' default format has no random access: with TensorFlow it streams in the same order, same pixels."""
    pytest.importorskip("tensorflow", reason="reading tfrecord-prepared datasets needs TensorFlow")
    tfds.builder("jaxcam_tiny_images", data_dir=tmp_path / "rec").download_and_prepare()  # tfrecord
    rec = tfds_source("jaxcam_tiny_images", data_dir=tmp_path / "rec")
    full = _check_shards_and_resume(rec, 7)
    arr = _all(tfds_source("jaxcam_tiny_images", data_dir=tmp_path / "arr", download=True))
    for k in full:
        np.testing.assert_array_equal(full[k], arr[k])


def test_tfds_mock_data_imagenette_and_imagenet(tfds):
    """tfds.testing.mock_data: random examples with the real features, no files, no TensorFlow."""
    with tfds.testing.mock_data(num_examples=5):
        src = get_source("tfds:imagenette")
        assert src.name == "tfds:imagenette:validation" and len(src) == 5 and len(src.classes) == 10
        full = _check_shards_and_resume(src, 5)
        assert full["id"].dtype == np.int64 and ((0 <= full["label"]) & (full["label"] < 10)).all()
        assert full["image"].shape == (5, 16, 16, 3) and 0 <= full["image"].min() and full["image"].max() <= 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            b = next(tfds_source("imagenet2012", split="validation").batches(4, size=8, workers=2))
        assert b["id"].dtype.kind == "U" and b["image"].shape == (4, 8, 8, 3)  # ids: the file_name feature
        assert ((0 <= b["label"]) & (b["label"] < 1000)).all()


def test_tfds_unknown_dataset_suggests(tfds):
    with pytest.raises(jaxcam.UnknownNameError, match="'imagenette'"):
        get_source("tfds:imagenete")


def test_tfds_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(jaxcam.MissingDependencyError, match=r"jax-cam\[data\]"):
        tfds_source("imagenette")
