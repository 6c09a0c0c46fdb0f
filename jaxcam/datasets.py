"""Image sources for dataset-scale runs: deterministic, shardable, resumable streams of fixed-size batches.

Every source is an :class:`ImageSource`. Its items have fixed *positions* ``0 .. len-1`` in one deterministic
order, and :meth:`ImageSource.batches` yields dicts of NumPy arrays::

    {"id":    (B,)          str or int64   stable name of each item (file path, sample name, tfds id or index),
     "index": (B,)          int64          the item's position in the source order,
     "image": (B, S, S, 3)  float32        RGB in [0, 1], resized to ``size`` (not normalised: see preprocess),
     "label": (B,)          int64          class index, or -1 when the source has none}

Selection, applied in this order:

* ``start`` / ``stop``: positions ``start <= p < stop`` of the whole source (not of a shard), so a run that
  finished everything before position ``p`` resumes with ``start=p`` whatever its sharding;
* ``shard=(index, count)``: positions with ``p % count == index``, the multi-host split (process ``i`` of ``n``
  passes ``shard=(i, n)``; the shards are disjoint and together cover every position exactly once);
* ``skip_ids``: items whose id is in this collection are left out before their image is decoded (after, for a
  tfds source whose ids are a feature of the example), the other way to resume.

Every batch holds ``batch_size`` items except the last, which holds the remainder (never an empty batch). Items
dropped by ``skip_ids`` or by ``on_error="skip"`` are replaced by the following ones, so a batch stays full.

Sources: :func:`sample_source` (scikit-image's bundled photographs), :func:`folder_source` (a folder of image
files), :func:`tfds_source` (tensorflow-datasets, read without TensorFlow from array_record files), and
:func:`get_source`, which parses the CLI's ``"sample"``, ``"folder:PATH"`` and ``"tfds:NAME[:SPLIT]"``.
Decoding and resizing go through :func:`jaxcam.data.to_rgb` and :func:`jaxcam.data.resize`, so a source and
:func:`jaxcam.preprocess` see the same pixels.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from .data import RESIZE_MODES, SAMPLE_IMAGES, resize, sample_images, to_rgb
from .errors import (EmptySourceError, ImageError, ImageFileError, InvalidArgumentError, JaxcamError,
                     MissingDependencyError, UnknownNameError)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
ON_ERROR = ("raise", "skip")
TFDS_ID_FEATURES = ("file_name", "image/filename", "filename", "image_id", "id")
DATA_EXTRA = "pip install 'jax-cam[data]'"

__all__ = [
    "DatasetNotPreparedError", "IMAGE_EXTENSIONS", "ImageSource", "folder_source", "get_source", "sample_source",
    "tfds_source",
]


class DatasetNotPreparedError(JaxcamError, FileNotFoundError):
    """A tensorflow-datasets dataset that is not prepared in its data_dir, and download=False."""


class EmptyFolderError(EmptySourceError, ImageFileError):
    """A folder without image files: an empty source, and (as before) an image-file error naming the folder."""


@dataclass(frozen=True)
class _Record:
    """One item: its position, its id when known without decoding (else None), and a loader of
    ``(id, raw image, label)``; the raw image is anything :func:`jaxcam.to_rgb` accepts."""

    position: int
    id: Any
    load: Callable[[], tuple[Any, Any, int]]


class ImageSource:
    """A deterministic, indexable stream of labelled images (see the module docstring for the batch format).

    Subclasses set ``name`` (used in result files), ``classes`` (class names by label, or None) and
    ``on_error``, and implement ``_length()`` and ``_records(positions)``.
    """

    name: str = "source"
    classes: tuple[str, ...] | None = None
    on_error: str = "raise"

    def _length(self) -> int | None:
        raise NotImplementedError

    def _records(self, positions: range) -> Iterator[_Record]:
        """The records at ``positions``, in order (for an unknown length the range is open-ended: stop at the end)."""
        raise NotImplementedError

    def __len__(self) -> int:
        n = self._length()
        if n is None:
            raise TypeError(f"{self.name}: the number of items is not known in advance")
        return n

    def __repr__(self) -> str:
        n = self._length()
        return f"<{type(self).__name__} {self.name!r}{'' if n is None else f' with {n} items'}>"

    def positions(self, start: int = 0, stop: int | None = None, shard: tuple[int, int] = (0, 1)) -> range:
        """The positions that ``batches(start=start, stop=stop, shard=shard)`` visits, in order (before
        ``skip_ids`` and ``on_error="skip"``). With an unknown length and ``stop=None`` the range is open-ended
        (its stop is the largest int64); iteration ends with the data."""
        index, count = _check_shard(shard)
        if not isinstance(start, (int, np.integer)) or isinstance(start, bool) or start < 0:
            raise InvalidArgumentError(f"start must be a non-negative integer, got {start!r}")
        n = self._length()
        if stop is None:
            stop = n if n is not None else np.iinfo(np.int64).max
        elif not isinstance(stop, (int, np.integer)) or isinstance(stop, bool) or stop < start:
            raise InvalidArgumentError(f"stop must be None or an integer >= start ({start}), got {stop!r}")
        elif n is not None:
            stop = min(int(stop), n)
        first = int(start) + (index - int(start)) % count
        return range(first, max(first, int(stop)), count)

    def batches(self, batch_size: int, *, size: int = 224, resize_mode: str = "stretch", start: int = 0,
                stop: int | None = None, shard: tuple[int, int] = (0, 1), skip_ids: Collection = (),
                workers: int = 0, on_skip: Callable[[int, Any, ImageError], None] | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
        """Yield batches ``{"id", "index", "image", "label"}`` (module docstring) of ``batch_size`` items.

        ``size``/``resize_mode``: as :func:`jaxcam.data.resize` (``"stretch"`` or ``"center_crop"``).
        ``start``/``stop``/``shard``/``skip_ids``: which items (module docstring). ``workers > 1`` decodes and
        resizes that many items at once in threads (PIL and tfds' readers release the GIL); the order and the
        output do not depend on it.
        Unreadable images raise :class:`~jaxcam.ImageFileError` naming the item, or, for a source built with
        ``on_error="skip"``, are left out with a ``warnings.warn`` naming it; ``on_skip(position, id, error)``, when
        given, is called instead of the warning (a caller that records what was left out, and reports it once).
        """
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise InvalidArgumentError(f"size must be a positive integer, got {size!r}")
        if resize_mode not in RESIZE_MODES:
            raise UnknownNameError(resize_mode, RESIZE_MODES, "resize_mode")
        if not isinstance(workers, (int, np.integer)) or workers < 0:
            raise InvalidArgumentError(f"workers must be a non-negative integer, got {workers!r}")
        positions = self.positions(start, stop, shard)  # validates start/stop/shard before the first item
        return self._batches(int(batch_size), int(size), resize_mode, positions, frozenset(skip_ids), int(workers),
                             on_skip)

    def _batches(self, batch_size, size, mode, positions, skip, workers, on_skip=None):
        records = (r for r in self._records(positions) if r.id is None or r.id not in skip)
        pool = ThreadPoolExecutor(workers) if workers > 1 else None
        pending: list[tuple] = []
        try:
            while chunk := list(islice(records, batch_size)):
                done = (pool.map if pool is not None else map)(lambda rec: _load(rec, size, mode), chunk)
                for rec, out in zip(chunk, done):
                    if isinstance(out, ImageError):
                        if self.on_error == "raise":
                            raise out
                        if on_skip is not None:
                            on_skip(rec.position, rec.id, out)
                            continue
                        warnings.warn(f"{self.name}: skipping item {rec.position}"
                                      f"{'' if rec.id is None else f' ({rec.id!r})'}: {out}", stacklevel=2)
                    elif out[1] not in skip:
                        pending.append(out)
                while len(pending) >= batch_size:
                    yield _stack(pending[:batch_size])
                    del pending[:batch_size]
            if pending:
                yield _stack(pending)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _check_shard(shard) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"shard must be a pair (index, count), got {shard!r}") from None
    if count < 1 or not 0 <= index < count:
        raise InvalidArgumentError(
            f"shard must be (index, count) with count >= 1 and 0 <= index < count, got {shard!r}")
    return index, count


def _load(rec: _Record, size: int, mode: str):
    """(position, id, image, label), or the ImageError that made the item unreadable."""
    try:
        item_id, raw, label = rec.load()
        name = raw if isinstance(raw, (str, os.PathLike)) else f"item {item_id!r}"
        # size_hint: a photo many times the run's size decodes at reduced scale (JPEG draft, uint8 reduce)
        return rec.position, item_id, resize(to_rgb(raw, name=str(name), size_hint=size), size, mode), int(label)
    except ImageError as exc:
        return exc


def _stack(items: list[tuple]) -> dict[str, np.ndarray]:
    ids = [it[1] for it in items]
    is_int = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids)
    return {
        "id": np.asarray(ids, np.int64) if is_int else np.asarray([str(i) for i in ids], dtype=np.str_),
        "index": np.asarray([it[0] for it in items], np.int64),
        "image": np.stack([it[2] for it in items]).astype(np.float32, copy=False),
        "label": np.asarray([it[3] for it in items], np.int64),
    }


def _check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise UnknownNameError(on_error, ON_ERROR, "on_error")
    return on_error


# ---------------------------------------------------------------------------------------------------- sample


class _SampleSource(ImageSource):
    def __init__(self, names: Sequence[str]):
        names = tuple(names)
        if not names:
            raise EmptySourceError("sample_source: names is empty; give at least one of "
                                   + ", ".join(SAMPLE_IMAGES))
        for n in names:
            if n not in SAMPLE_IMAGES:
                sample_images([n])  # raises ImageFileError listing the valid names if n is not a photo
        self.names, self.name = names, "sample" if names == SAMPLE_IMAGES else "sample:" + ",".join(names)

    def _length(self) -> int:
        return len(self.names)

    def _records(self, positions: range) -> Iterator[_Record]:
        for p in positions:
            name = self.names[p]
            yield _Record(p, name, lambda name=name: (name, sample_images([name])[name], -1))


def sample_source(names: Sequence[str] = SAMPLE_IMAGES) -> ImageSource:
    """scikit-image's bundled photographs (default: chelsea, coffee, astronaut, rocket) as a source.

    Ids are the names, labels -1. The default run of the CLI, and the smallest end-to-end check of a pipeline.
    """
    return _SampleSource(names)


class _ArraySource(ImageSource):
    def __init__(self, images, ids, labels, name):
        self.images = list(images)
        self.ids = list(range(len(self.images))) if ids is None else list(ids)
        self.labels = [-1] * len(self.images) if labels is None else [int(v) for v in labels]
        if not (len(self.ids) == len(self.labels) == len(self.images)):
            raise InvalidArgumentError(
                f"array_source: {len(self.images)} images, {len(self.ids)} ids, {len(self.labels)} labels")
        self.name = name

    def _length(self) -> int:
        return len(self.images)

    def _records(self, positions: range) -> Iterator[_Record]:
        for p in positions:
            yield _Record(p, self.ids[p], lambda p=p: (self.ids[p], self.images[p], self.labels[p]))


def array_source(images, *, ids=None, labels=None, name: str = "images") -> ImageSource:
    """Images already in memory (a list of anything :func:`jaxcam.to_rgb` accepts, or an (N, H, W, C) array) as a
    source; ids default to their positions."""
    return _ArraySource(images, ids, labels, name)


def as_source(obj) -> ImageSource:
    """A source from a source, a spec string (:func:`get_source`), or in-memory images (:func:`array_source`)."""
    if isinstance(obj, ImageSource):
        return obj
    if isinstance(obj, str):
        return get_source(obj)
    if isinstance(obj, (bytes, os.PathLike)) or not (isinstance(obj, np.ndarray) or hasattr(obj, "__iter__")):
        raise InvalidArgumentError(
            f"source must be an ImageSource, a spec string ('sample', 'folder:DIR', 'tfds:NAME[:SPLIT]') or a list "
            f"or array of images, got {type(obj).__name__}; for a folder pass 'folder:' + path")
    return array_source(obj)


# ---------------------------------------------------------------------------------------------------- folder


class _FolderSource(ImageSource):
    def __init__(self, path, extensions, labels_from, on_error):
        self.root = os.fspath(path)
        if labels_from not in ("subdirectory", None):
            raise UnknownNameError(labels_from, ("subdirectory", "None"), "labels_from")
        self.on_error = _check_on_error(on_error)
        if not os.path.isdir(self.root):
            raise ImageFileError(f"image folder not found (or not a folder): {self.root!r}")
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.name = f"folder:{self.root}"
        files = []
        seen = set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink loop: do not descend twice
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = os.path.relpath(dirpath, self.root)
            for f in filenames:
                if not f.startswith(".") and f.lower().endswith(exts):
                    files.append(f if rel_dir == "." else os.path.join(rel_dir, f).replace(os.sep, "/"))
        self.files = tuple(sorted(files))
        if not self.files:
            raise EmptyFolderError(f"no image files ({', '.join(exts)}) under {self.root!r}: the source is empty; "
                                   "add images or give another folder")
        if labels_from == "subdirectory":
            self.classes = tuple(sorted(d.name for d in os.scandir(self.root)
                                        if d.is_dir() and not d.name.startswith(".")))
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = tuple(index.get(f.split("/", 1)[0], -1) if "/" in f else -1 for f in self.files)
        else:
            self.labels = (-1,) * len(self.files)

    def _length(self) -> int:
        return len(self.files)

    def _records(self, positions: range) -> Iterator[_Record]:
        for p in positions:
            rel, label = self.files[p], self.labels[p]
            yield _Record(p, rel, lambda rel=rel, label=label: (rel, os.path.join(self.root, rel), label))


def folder_source(path, *, extensions: Iterable[str] = IMAGE_EXTENSIONS, labels_from: str | None = "subdirectory",
                  on_error: str = "raise") -> ImageSource:
    """The image files under ``path`` (recursive, following symlinks), sorted by relative path.

    Ids are the relative paths with ``/`` separators. Files are matched by extension (case-insensitive); other
    files and hidden files and folders (names starting with ``.``) are ignored. With
    ``labels_from="subdirectory"`` (torchvision's ImageFolder layout) ``classes`` is the sorted list of the
    top-level subfolders and an image's label is the index of the top-level subfolder it lies in (-1 for
    images directly in ``path``); with ``labels_from=None`` every label is -1. The file list is read once, here;
    ``len`` counts files, readable or not. A file that does not decode raises :class:`~jaxcam.ImageFileError`
    naming it when its batch is built, or with ``on_error="skip"`` is left out with a warning.
    """
    return _FolderSource(path, tuple(extensions), labels_from, on_error)


# ---------------------------------------------------------------------------------------------------- tfds


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise MissingDependencyError(
            f"reading tensorflow-datasets needs the 'data' extra: {DATA_EXTRA} ({exc})") from None
    return tfds


def _have_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _plain(value):
    """A tfds scalar (numpy scalar or 0-d array, bytes, str) as a Python int or str."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.ndim == 0 else value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _decode_bytes(data, item_id):
    """An example's encoded image through jaxcam's one decoder (pixel cap, EXIF orientation, one ImageFileError
    naming the example for anything that does not decode)."""
    from .data import decode_image

    return decode_image(bytes(data), name=f"example {item_id!r}")


class _TfdsSource(ImageSource):
    def __init__(self, name, split, data_dir, manual_dir, download, image_key, label_key, id_key, on_error):
        tfds = _import_tfds()
        self.tfds_name, self.split, self.on_error = name, split, _check_on_error(on_error)
        self.name = f"tfds:{name}:{split}"
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            known = tfds.list_builders(with_community_datasets=False)  # the community index needs network
            close = difflib.get_close_matches(name.split("/")[0].split(":")[0], known, n=12, cutoff=0.5)
            raise UnknownNameError(name, close or sorted(known),
                                   "a tensorflow-datasets dataset (closest shown; tfds.list_builders() lists all)"
                                   ) from None
        self.builder = builder
        if download or (manual_dir is not None and builder.MANUAL_DOWNLOAD_INSTRUCTIONS):
            self._prepare(tfds, manual_dir)
        features = builder.info.features
        keys = tuple(features.keys())
        if image_key not in keys:
            raise UnknownNameError(image_key, keys, f"image_key of {name}")
        if label_key is not None and label_key not in keys:
            raise UnknownNameError(label_key, keys, f"label_key of {name} (pass label_key=None for no labels)")
        if id_key == "auto":
            id_key = next((k for k in TFDS_ID_FEATURES if k in keys), None)
        elif id_key is not None and id_key not in keys:
            raise UnknownNameError(id_key, keys, f"id_key of {name} (None: the example index)")
        self.image_key, self.label_key, self.id_key = image_key, label_key, id_key
        names = getattr(features[label_key], "names", None) if label_key is not None else None
        self.classes = tuple(names) if names else None
        self._data, self._num = None, None
        try:
            self._data = builder.as_data_source(split=split)
            self._num = len(self._data)
        except NotImplementedError as exc:  # no random access: not prepared, or prepared as tfrecord
            if not builder.is_prepared():
                raise DatasetNotPreparedError(
                    f"tensorflow-datasets {name!r} is not prepared in {os.fspath(builder.data_dir)!r}; pass "
                    "download=True (or manual_dir=... for a manual dataset such as imagenet2012) to prepare it, "
                    f"or prepare it elsewhere with `tfds build {name} --file_format=array_record` and pass that "
                    "data_dir") from None
            self._num = self._tf_length(split)
            self._tf_reason = str(exc).splitlines()[0]
        except (KeyError, ValueError):
            splits = tuple(builder.info.splits.keys()) if builder.is_prepared() else ()
            if splits and split.split("[")[0] not in splits:
                raise UnknownNameError(split, splits, f"split of {name}") from None
            raise

    def _prepare(self, tfds, manual_dir):
        config = tfds.download.DownloadConfig(manual_dir=None if manual_dir is None else os.fspath(manual_dir))
        try:
            self.builder.download_and_prepare(file_format="array_record", download_config=config)
        except ImportError as exc:
            if "tensorflow" not in str(exc):
                raise
            raise MissingDependencyError(
                f"preparing tensorflow-datasets {self.tfds_name!r} needs TensorFlow (pip install tensorflow-cpu); "
                "reading a prepared array_record dataset does not") from exc

    def _tf_length(self, split):
        try:
            return int(self.builder.info.splits[split].num_examples)
        except Exception:  # noqa: BLE001 - an odd split expression: length unknown, streaming still works
            return None

    def _length(self) -> int | None:
        return self._num

    def _example(self, example, position):
        item_id = position if self.id_key is None else _plain(example[self.id_key])
        label = -1 if self.label_key is None else int(_plain(example[self.label_key]))
        image = example[self.image_key]
        if isinstance(image, bytes):
            image = _decode_bytes(image, item_id)
        return item_id, image, label

    def _records(self, positions: range) -> Iterator[_Record]:
        if self._data is None:
            yield from self._tf_records(positions)
            return
        data, by_index = self._data, self.id_key is None

        def load(p):
            try:
                example = data[p]
            except ImportError:
                raise
            except Exception as exc:  # noqa: BLE001 - PIL and OpenCV fail on bad bytes in different ways
                raise ImageFileError(f"{self.name}: example {p} does not decode: {type(exc).__name__}: {exc}"
                                     ) from None
            return self._example(example, p)

        for p in positions:
            yield _Record(p, p if by_index else None, lambda p=p: load(p))

    def _tf_records(self, positions: range) -> Iterator[_Record]:
        """Datasets prepared as tfrecord (tfds' default) have no random access: stream them with tf.data."""
        tfds = self._tfds_with_tf()
        ds = self.builder.as_dataset(split=self.split, shuffle_files=False,
                                     decoders={self.image_key: tfds.decode.SkipDecoding()})
        ds = ds.skip(positions.start)
        if positions.step > 1:
            ds = ds.shard(positions.step, 0)
        ds = ds.take(len(positions))
        for p, example in zip(positions, tfds.as_numpy(ds)):
            item_id = p if self.id_key is None else _plain(example[self.id_key])
            yield _Record(p, item_id, lambda ex=example, p=p: self._example(ex, p))

    def _tfds_with_tf(self):
        if not _have_tensorflow():
            raise MissingDependencyError(
                f"{self.name} is prepared in a format without random access ({self._tf_reason}); reading it needs "
                "TensorFlow (pip install tensorflow-cpu), or prepare it again as array_record "
                f"(`tfds build {self.tfds_name} --file_format=array_record`, or delete "
                f"{os.fspath(self.builder.data_dir)!r} and pass download=True)")
        return _import_tfds()


def tfds_source(name: str, *, split: str = "validation", data_dir=None, manual_dir=None, download: bool = False,
                image_key: str = "image", label_key: str | None = "label", id_key: str | None = "auto",
                on_error: str = "raise") -> ImageSource:
    """A tensorflow-datasets split (``"imagenette"``, ``"imagenet2012"``, ``"caltech_birds2011"``, ...) as a source.

    Needs the ``data`` extra (``pip install 'jax-cam[data]'``), imported here, not with jaxcam. Reading is
    TensorFlow-free: a dataset prepared as array_record is read by random access (``tfds.data_source``) in the
    stored order; a dataset prepared as tfrecord (tfds' default) is streamed through ``tf.data`` and needs
    TensorFlow. Nothing is fetched unless ``download=True``; a manual dataset (imagenet2012: put
    ILSVRC2012_img_val.tar in ``manual_dir``) is prepared from ``manual_dir`` without fetching. Preparing
    (``download=True`` or ``manual_dir``) writes array_record files to ``data_dir`` (tfds' default
    ``~/tensorflow_datasets``) and, for most datasets, needs TensorFlow. A dataset not prepared raises
    :class:`DatasetNotPreparedError`.

    Ids: the feature ``id_key`` (``"auto"``: the first of file_name, image/filename, filename, image_id, id that
    the dataset has; imagenet2012's file_name, caltech_birds2011's image/filename), or, with ``id_key=None`` or
    when there is none, the example's index in the split. Labels: ``label_key`` (None: -1 for all); ``classes``
    holds the ClassLabel names.
    """
    return _TfdsSource(name, split, data_dir, manual_dir, download, image_key, label_key, id_key, on_error)


# ---------------------------------------------------------------------------------------------------- specs

SCHEMES = ("sample", "folder", "tfds", "synthetic")
_TFDS_SPEC = re.compile(r"^(?P<name>[^:\[\]]+(?::(?:\d+|\*)(?:\.(?:\d+|\*)){0,2})?)(?::(?P<split>.+))?$")


def get_source(spec, **options) -> ImageSource:
    """A source from a CLI string, with ``options`` passed to its constructor.

    ``"sample"`` or ``"sample:chelsea,coffee"``; ``"folder:PATH"``; ``"tfds:NAME[:SPLIT]"`` where NAME may carry a
    config and version (``"tfds:imagenette/160px-v2:1.0.0:validation[:500]"``) and SPLIT defaults to validation;
    ``"synthetic:N[:SPLIT]"``: N images of the synthetic localisation benchmark (:mod:`jaxcam.synthetic`; split
    train or test).
    An :class:`ImageSource` is returned as it is.
    """
    if isinstance(spec, ImageSource):
        return spec
    if not isinstance(spec, str):
        raise InvalidArgumentError(f"dataset spec must be a string or an ImageSource, got {type(spec).__name__}")
    scheme, _, rest = spec.partition(":")
    if scheme == "sample":
        names = [n.strip() for n in rest.split(",") if n.strip()] if rest else list(SAMPLE_IMAGES)
        return sample_source(names, **options)
    if scheme == "folder":
        if not rest:
            raise InvalidArgumentError(f"dataset spec {spec!r}: give the folder, as folder:PATH")
        return folder_source(rest, **options)
    if scheme == "tfds":
        m = _TFDS_SPEC.match(rest)
        if not rest or m is None:
            raise InvalidArgumentError(
                f"dataset spec {spec!r}: expected tfds:NAME[:SPLIT], e.g. tfds:imagenette:validation")
        if m["split"] is not None:
            options.setdefault("split", m["split"])
        return tfds_source(m["name"], **options)
    if scheme == "synthetic":
        n, _, split = rest.partition(":")
        if not n.isdigit() or int(n) < 1:
            raise InvalidArgumentError(f"dataset spec {spec!r}: expected synthetic:N[:SPLIT] with N a positive "
                                       "number of images, e.g. synthetic:512:train")
        from .synthetic import synthetic_source

        return synthetic_source(int(n), split=split or "train", **options)
    raise UnknownNameError(scheme, SCHEMES, f"dataset spec {spec!r} (forms: sample, folder:PATH, tfds:NAME[:SPLIT], "
                           "synthetic:N[:SPLIT])")
