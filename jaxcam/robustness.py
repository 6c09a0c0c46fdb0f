"""Noise robustness of CAMs (Sarkar et al., arXiv 2508.18154): grids of perturbations, RM = Consistency x
Responsiveness, written incrementally to Parquet and resumable.

For each clean image: its prediction, its maps for every method, and its Quickshift regions (computed once). For
every job (image, noise, severity, draw) of the grid: the perturbed image (pixel space, then normalised), its
prediction and maps for every method (one shared forward/backward), and each map's similarity to the clean map
(rank-biased overlap of the region rankings by default). One jitted program evaluates a whole chunk of jobs -- noise,
forward, capture, all methods, region scores, similarity -- with no Python loop over images, noises, severities or
methods; the chunk's job axis is sharded over every local JAX device (data parallel: results do not depend on the
device count), and with several processes (``jax.distributed``) each takes every ``process_count``-th image.

Everything is checked before anything is written: the arguments, the methods on the model's layer, an existing
``run.json`` (a resume must match it), and every item of the source, each decoded once at the run's size and
identified by its id and the SHA-256 of its pixels. The items are then cut into image batches, and each batch is
named by a digest of its items (ids and pixel hashes). Each finished chunk is written to its own Parquet file
(atomically: a temporary name, then a rename) named by that digest, the noise and the chunk, and every row carries
its image's hash (``image_sha256``). ``manifest-<process>.json`` lists the batches of the source as it is now, and
:func:`read` keeps only the parts of listed batches. So a run killed at any point and started again computes only
what is missing; an image replaced under the same name, or a file added to a folder, changes the digests of the
batches they fall in, which are computed again, while the parts of the old content stay on disk unread: no item is
counted twice, mixed with another or skipped. Every job's random key depends only on the run key and the job's
identity (``jaxcam.noise.job_key``), and the batches are those an uninterrupted run on the same data would form, so
the result equals an uninterrupted run. ``summarise`` pools the rows per method x noise x severity (C, Rsp, RM,
counts and bootstrap intervals) and the statistics module compares methods.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from . import noise as noise_mod
from ._explain import explain_program
from .errors import CorruptFileError, EmptySourceError, InvalidArgumentError, JaxcamError, UnknownNameError
from .files import atomic_write
from .metrics import robustness as rm
from .table import Table

PAPER_METHODS = ("gradcam", "gradcam++", "xgradcam", "ablationcam", "hirescam", "eigencam")
TRACES = {"chunk": 0}  # chunk programs traced (a test counts them)
COLUMNS = ("model", "dataset", "image", "image_sha256", "method", "noise", "severity", "draw", "pred_before",
           "conf_before", "pred_after", "conf_after", "conf_after_original", "changed", "similarity", "value")
ITEMS = "id + sha256 of float32 pixels at size; parts named by batch digest"  # how a resume identifies items
MAX_KEY = 2 ** 32 - 1  # JAX folds larger (and negative) int seeds onto 0..2**32-1 without x64


class RunConfigError(JaxcamError, ValueError):
    """A resumed run whose configuration differs from the one its output directory was started with."""


class SourceChangedError(JaxcamError, RuntimeError):
    """An item of the source that changed (or became unreadable) between the check of every item and its
    computation; nothing of its batch was written."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's rows (stored in ``run.json``; a resume must match it)."""

    model: str
    weights: str
    dataset: str
    methods: tuple[str, ...]
    noises: tuple[str, ...]
    severities: tuple[int, ...]
    draws: int
    key: int
    similarity: str
    explain_class: str
    image_batch: int
    chunk: int
    size: int
    rbo_p: float
    layer: str | None
    processes: int
    items: str = ITEMS

    def grid(self) -> noise_mod.Grid:
        return noise_mod.Grid(self.noises, self.severities, self.draws)


def image_hash(image_id) -> int:
    """A stable 31-bit integer for an image id (str or int): it seeds the image's noise keys."""
    return zlib.crc32(str(image_id).encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class _Static:
    forward: object  # the model's plain forward (params, x) -> logits, hashable
    explain: object  # jaxcam.explain_program(...): (params, x, classes, key) -> (maps, logits, classes)
    methods: tuple[str, ...]
    noises: tuple[str, ...]
    similarity: str
    explain_class: str
    num_regions: int
    rbo_p: float
    mean: tuple
    std: tuple


@lru_cache(maxsize=16)
def _chunk_program(st: _Static):
    """``(params, pixels, labels, m, clean_maps, clean_pred, ids, level, draw, noise_idx, key) -> dict`` for a
    chunk of jobs of one noise (``noise_idx`` a traced scalar), jitted."""
    run = st.explain
    mean = jnp.asarray(st.mean, jnp.float32).reshape(1, 1, 1, -1)
    std = jnp.asarray(st.std, jnp.float32).reshape(1, 1, 1, -1)
    sim = rm.ROBUSTNESS_SIMILARITIES[st.similarity]
    sim_kwargs = {"p": st.rbo_p, "num_regions": st.num_regions} if st.similarity == "rbo" else {}

    forward = st.forward

    def chunk(params, pixels, labels, m, clean_maps, clean_pred, ids, level, draw, noise_idx, key):
        TRACES["chunk"] += 1
        def logits_fn(img):  # pixel-space images -> logits, for the adversarial noises
            return forward(params, (img - mean) / std)

        noisy = noise_mod.perturb_batch(st.noises, key, pixels, ids, noise_idx, level, draw, logits_fn=logits_fn,
                                        labels=clean_pred)
        x = (noisy - mean) / std
        classes = clean_pred if st.explain_class == "original_prediction" else None
        maps, logits, cls = run(params, x, classes, jax.random.fold_in(key, 1))
        probs = jax.nn.softmax(logits, -1)
        pred = jnp.argmax(logits, -1).astype(jnp.int32)
        rows = jnp.arange(x.shape[0])
        out = {"pred_after": pred, "conf_after": probs[rows, pred], "conf_after_original": probs[rows, clean_pred]}
        for j, name in enumerate(st.methods):
            out[name] = jax.vmap(lambda a, b, lab, mm: sim(a, b, lab, mm, **sim_kwargs))(
                clean_maps[:, j], maps[name], labels, m)
        return out

    return jax.jit(chunk)


def _mesh_shardings(n: int):
    """Job-axis sharding over the local devices (None on one device); ``n`` is padded to a multiple of their count."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return None, n
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devices), ("data",))
    padded = -(-n // len(devices)) * len(devices)
    return NamedSharding(mesh, PartitionSpec("data")), padded


def _clean_pass(model, cfg: RunConfig, layer, pixels: np.ndarray):
    """Clean predictions, confidences and maps (N, methods, H, W) of a batch of pixel images."""
    from ._explain import explain

    x = model.check_input((pixels - np.asarray(model.mean, np.float32)) / np.asarray(model.std,
                                                                                          np.float32))
    maps, logits, cls = explain(model, x, list(cfg.methods), layer=layer, preprocessed=True,
                                key=jax.random.key(cfg.key), return_logits=True)
    probs = np.asarray(jax.nn.softmax(logits, -1))
    cls = np.asarray(cls)
    return cls, probs[np.arange(len(cls)), cls], np.stack([np.asarray(maps[m]) for m in cfg.methods], 1)


EXPLAIN_CLASSES = ("new_prediction", "original_prediction")


def _part_path(out_dir: str, digest: str, noise_index: int, chunk_index: int) -> str:
    return os.path.join(out_dir, "parts", f"{digest}-noise{noise_index:02d}-chunk{chunk_index:05d}.parquet")


def _manifest_path(out_dir: str, process_index: int) -> str:
    return os.path.join(out_dir, f"manifest-{process_index:04d}.json")


def _slices(n: int, size: int) -> list[slice]:
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def _write_part(path: str, rows: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path + ".tmp"
    pq.write_table(pa.table(rows), tmp)
    os.replace(tmp, path)  # atomic: a killed run leaves either the whole part or none


# ------------------------------------------------------------------------------------ checks before any work


def _int_arg(name: str, value, low: int, high: int | None = None) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low or (
            high is not None and value > high):
        want = f">= {low}" if high is None else f"in {low}..{high}"
        raise InvalidArgumentError(f"{name} must be an integer {want}, got {value!r}")
    return int(value)


def _name_list(name: str, values, valid: Sequence[str], error=UnknownNameError) -> tuple[str, ...]:
    """``values`` (one name or a list of them) checked against ``valid``: none unknown, none twice, not empty."""
    values = (values,) if isinstance(values, str) else values
    try:
        values = tuple(values)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be a list of names, got {type(values).__name__}") from None
    if not values:
        raise InvalidArgumentError(f"{name} is empty; give at least one of {', '.join(valid)}")
    for v in values:
        if not isinstance(v, str) or v not in valid:
            raise error(v, valid, name)
    if len(set(values)) != len(values):
        raise InvalidArgumentError(f"{name} lists a name twice: {', '.join(values)}")
    return values


def _check_layer(layer) -> None:
    def one(v):
        return isinstance(v, str) or isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if layer is None or one(layer) or isinstance(layer, (list, tuple)) and layer and all(one(v) for v in layer):
        return
    raise InvalidArgumentError(f"layer must be None (the model's default), a layer name or index, or a list of "
                               f"them, got {layer!r}")


def _checked_config(model, src, shard, methods, noises, severities, draws, key, similarity, explain_class,
                    image_batch, chunk, size, rbo_p, layer, dataset, model_name, max_chunks):
    """``(RunConfig, explain configuration)``: every argument checked (the methods and the layer on this model)
    before anything is read or written; a bad one raises InvalidArgumentError or UnknownNameError naming it."""
    from .methods import METHODS

    methods = _name_list("methods", methods, tuple(METHODS))
    noises = _name_list("noises", noises, noise_mod.NOISE_NAMES, noise_mod.UnknownNoiseError)
    if isinstance(severities, (int, np.integer)):
        severities = (severities,)
    if isinstance(severities, (str, bytes)) or not hasattr(severities, "__iter__"):
        raise InvalidArgumentError(f"severities must be a list of levels 1..{noise_mod.MAX_LEVEL}, got "
                                   f"{severities!r}")
    severities = tuple(_int_arg("severities", s, 1, noise_mod.MAX_LEVEL) for s in severities)
    if not severities or len(set(severities)) != len(severities):
        raise InvalidArgumentError(f"severities must list levels 1..{noise_mod.MAX_LEVEL} once each, got "
                                   f"{list(severities)}")
    if not isinstance(similarity, str) or similarity not in rm.ROBUSTNESS_SIMILARITIES:
        raise UnknownNameError(similarity, tuple(rm.ROBUSTNESS_SIMILARITIES), "robustness similarity")
    if not isinstance(explain_class, str) or explain_class not in EXPLAIN_CLASSES:
        raise UnknownNameError(explain_class, EXPLAIN_CLASSES, "explain_class")
    ints = {name: _int_arg(name, v, 1) for name, v in (("draws", draws), ("image_batch", image_batch),
                                                       ("chunk", chunk), ("size", size))}
    key = _int_arg("key", key, 0, MAX_KEY)
    if not isinstance(rbo_p, (int, float, np.floating)) or isinstance(rbo_p, bool) or not 0 < rbo_p < 1:
        raise InvalidArgumentError(f"rbo_p must be a number in (0, 1), got {rbo_p!r}")
    if max_chunks is not None:
        _int_arg("max_chunks", max_chunks, 0)
    for name, v in (("dataset", dataset), ("model_name", model_name)):
        if v is not None and (not isinstance(v, str) or not v):
            raise InvalidArgumentError(f"{name} must be None or a non-empty string, got {v!r}")
    _check_layer(layer)
    explain_fn = explain_program(model, list(methods), layer, batch_size=None)
    cfg = RunConfig(model_name or model.name, str(model.source), dataset or src.name, methods, noises, severities,
                    ints["draws"], key, similarity, explain_class, ints["image_batch"], ints["chunk"], ints["size"],
                    float(rbo_p), None if layer is None else str(layer), shard[1])
    return cfg, explain_fn


def _check_process(process) -> tuple[int, int]:
    if process is None:
        return jax.process_index(), jax.process_count()
    try:
        index, count = (int(v) for v in process)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"process must be a pair (index, count), got {process!r}") from None
    if not 0 <= index < count:
        raise InvalidArgumentError(f"process must be (index, count) with 0 <= index < count, got {process!r}")
    return index, count


def check_out_dir(out_dir) -> str:
    """``out_dir`` as a string, when it can hold a run: a directory, or a path whose first existing ancestor is a
    writable directory. Creates nothing (:func:`run` creates it once every other check has passed, so a refused
    run leaves no trace); raises :class:`~jaxcam.InvalidArgumentError` naming the obstacle otherwise."""
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        raise InvalidArgumentError(f"out_dir must be a directory path, got {out_dir!r}")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InvalidArgumentError(f"cannot create output directory {out_dir}: it exists and is not a directory; "
                                   "choose another")
    head = os.path.abspath(out_dir)
    while not os.path.exists(head):
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        raise InvalidArgumentError(f"cannot create output directory {out_dir}: {head} is a file, not a directory; "
                                   "choose another")
    if not os.access(head, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"cannot create output directory {out_dir}: {head} is not writable; choose "
                                   "another")
    return out_dir


def _read_json(path: str, fix: str) -> dict:
    """A JSON object jaxcam wrote; a damaged one raises CorruptFileError naming it and saying ``fix``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CorruptFileError(f"{path} is not readable JSON ({type(exc).__name__}: {exc}); jaxcam writes it "
                               f"atomically, so it was damaged afterwards: {fix}") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} holds a JSON {type(data).__name__}, not the object jaxcam writes: {fix}")
    return data


def _has_parts(out_dir: str) -> bool:
    parts = os.path.join(out_dir, "parts")
    return os.path.isdir(parts) and any(f.endswith(".parquet") for f in os.listdir(parts))


def _check_existing(out_dir: str, cfg: RunConfig, resume: bool, process_index: int = 0) -> None:
    """Refuse, before anything is written, a directory that holds another run, or results without ``resume``. In a
    run of several processes, the parts of the others (which may start earlier) are expected: only a process that
    has started in this directory before (its manifest exists) needs ``resume``."""
    path = os.path.join(out_dir, "run.json")
    if not os.path.exists(path):
        return
    has_parts = _has_parts(out_dir)
    fix = ("start the run in a new directory" if has_parts else
           f"start the run in a new directory, or delete {path} (no parts were written) and run again")
    have = _read_json(path, fix)
    want = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as they read back
    if have != want:
        diff = {k: (have.get(k), want[k]) for k in want if have.get(k) != want[k]}
        raise RunConfigError(f"{out_dir} holds a run with another configuration ({diff}); use a new directory")
    started = cfg.processes == 1 or os.path.exists(_manifest_path(out_dir, process_index))
    if not resume and has_parts and started:
        raise RunConfigError(f"{out_dir} already holds results; pass resume=True to continue that run")


# ------------------------------------------------------------------------------------------ items and batches


@dataclass(frozen=True)
class _Batch:
    """One image batch of this process's share: its items' positions, ids (as the rows name them) and pixel hashes."""

    positions: tuple[int, ...]
    ids: tuple[str, ...]
    sha256: tuple[str, ...]

    @property
    def digest(self) -> str:
        """Names the batch's parts: the same items with the same pixels give the same digest, anything else not."""
        return hashlib.sha256(json.dumps([self.ids, self.sha256]).encode()).hexdigest()[:24]


def _pixel_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()


def _batch_of(batch: dict) -> _Batch:
    return _Batch(tuple(int(p) for p in batch["index"]), tuple(np.asarray(batch["id"]).astype(str).tolist()),
                  tuple(_pixel_sha256(im) for im in batch["image"]))


def _plan(src, cfg: RunConfig, shard: tuple[int, int]) -> tuple[list[_Batch], list[dict]]:
    """``(batches, skipped)``: every item of this process's share decoded once at the run's size and hashed, cut into
    the source's own batches (those an uninterrupted run forms). Only hashes are kept, so memory stays one batch.
    An unreadable item raises the source's ImageFileError naming it (a source built with ``on_error="skip"``
    leaves it out with a warning, and it is listed in ``skipped``); no item raises EmptySourceError; an id given
    twice, InvalidArgumentError. All before anything is written."""
    skipped: list[dict] = []

    def skip(position, item_id, error):
        name = "" if item_id is None else f" ({item_id!r})"
        skipped.append({"position": int(position), "id": None if item_id is None else str(item_id),
                        "reason": str(error)})
        warnings.warn(f"{src.name}: skipping unreadable item {position}{name}: {error}; it is left out of the run "
                      "(listed under 'skipped' in the run's manifest)", stacklevel=4)

    plan, seen = [], {}
    for batch in src.batches(cfg.image_batch, size=cfg.size, shard=shard, on_skip=skip):
        b = _batch_of(batch)
        for item_id, p in zip(b.ids, b.positions):
            if item_id in seen:
                raise InvalidArgumentError(f"{src.name}: items {seen[item_id]} and {p} have the same id {item_id!r}; "
                                           "rows are named by id, so ids must be unique (array_source(ids=...))")
            seen[item_id] = p
        plan.append(b)
    if not plan:
        raise EmptySourceError(_empty_message(src, shard, skipped))
    return plan, skipped


def _empty_message(src, shard, skipped) -> str:
    if skipped:
        return (f"every item of {src.name!r} is unreadable ({len(skipped)} skipped, see the warnings): nothing to "
                "run; fix or replace the files")
    try:
        n = len(src)
    except TypeError:
        n = None
    if shard[1] > 1 and n != 0:
        have = "" if n is None else f" (it has {n} items: run at most {n} processes)"
        return f"process {shard[0]} of {shard[1]} gets no item of {src.name!r}{have}"
    return f"{src.name!r} holds no images: nothing to run; give at least one image"


def _reload(src, b: _Batch, cfg: RunConfig, shard) -> dict:
    """The pixels of a planned batch, decoded again and checked against the plan (an item replaced or made
    unreadable since raises SourceChangedError; nothing of the batch has been written then)."""
    got = next(src.batches(len(b.ids), size=cfg.size, start=b.positions[0], stop=b.positions[-1] + 1, shard=shard,
                           on_skip=lambda *_: None), None)
    now = _batch_of(got) if got is not None else _Batch((), (), ())
    if now != b:
        changed = sorted(set(zip(b.ids, b.sha256)) ^ set(zip(now.ids, now.sha256)))
        names = ", ".join(dict.fromkeys(repr(i) for i, _ in changed)) or "the order"
        raise SourceChangedError(f"{src.name}: {names} changed while the run was reading the source (after every "
                                 "item was checked); nothing of that batch was written: run again with resume=True "
                                 "(jaxcam robustness --resume)")
    return got


def _part_done(path: str, n_rows: int) -> bool:
    """Whether the part exists whole; a damaged one (unreadable, other columns, wrong row count) is computed again."""
    if not os.path.exists(path):
        return False
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        ok = meta.num_rows == n_rows and tuple(meta.schema.names) == COLUMNS
        why = f"{meta.num_rows} rows, expected {n_rows}" if meta.num_rows != n_rows else "other columns"
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        ok, why = False, f"{type(exc).__name__}: {_first_line(exc)}"
    if not ok:
        warnings.warn(f"{path} is damaged ({why}); computing it again", stacklevel=3)
    return ok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _start(out_dir: str, cfg: RunConfig, shard, src, plan: list[_Batch], skipped: list[dict]) -> None:
    """Create the directory, write run.json (a new run) and this process's manifest: its batches as they are now."""
    os.makedirs(os.path.join(out_dir, "parts"), exist_ok=True)
    path = os.path.join(out_dir, "run.json")
    if not os.path.exists(path):
        atomic_write(path, json.dumps(json.loads(json.dumps(asdict(cfg))), indent=1))
    manifest = {"source": src.name, "process": list(shard), "items": ITEMS, "skipped": skipped,
                "batches": [{"digest": b.digest, "items": [list(t) for t in zip(b.positions, b.ids, b.sha256)]}
                            for b in plan]}
    atomic_write(_manifest_path(out_dir, shard[0]), json.dumps(manifest))


def _chunks(jobs, n_noises: int, n_img: int, chunk: int) -> list[tuple[int, int, tuple]]:
    """``(noise, chunk index, (image, level, draw))`` of one batch: jobs grouped by noise (one noise per chunk: the
    chunk program switches on one traced noise index, so only that noise is computed), image-major inside a noise."""
    out = []
    for q in range(n_noises):
        sel = jobs[0] == q
        lev_q, drw_q = np.tile(jobs[1][sel], n_img), np.tile(jobs[2][sel], n_img)
        img_q = np.repeat(np.arange(n_img), int(sel.sum()))
        out += [(q, c, (img_q[sl], lev_q[sl], drw_q[sl])) for c, sl in enumerate(_slices(len(img_q), chunk))]
    return out


# ------------------------------------------------------------------------------------------------------ the run


def run(model, source, out_dir: str, *, methods: Sequence[str] = PAPER_METHODS,
        noises: Sequence[str] = ("gaussian", "shot", "impulse", "speckle"), severities: Sequence[int] = (1, 2, 3, 4, 5),
        draws: int = 2, key: int = 0, similarity: str = "rbo", explain_class: str = "new_prediction",
        image_batch: int = 8, chunk: int = 64, size: int = 224, rbo_p: float = 0.9, layer=None,
        dataset: str | None = None, model_name: str | None = None,
        resume: bool = False, progress: bool = True, max_chunks: int | None = None,
        process: tuple[int, int] | None = None) -> Table:
    """Run the robustness grid of ``methods`` x ``noises`` x ``severities`` x ``draws`` over the images of ``source``
    (a :mod:`jaxcam.datasets` source, or a list/array of images) and write its rows under ``out_dir``.

    Before anything is written, every argument is checked, an existing ``run.json`` is compared, and every item of
    the source is decoded once and hashed (see the module docstring): a bad argument raises
    :class:`~jaxcam.InvalidArgumentError` or :class:`~jaxcam.UnknownNameError`, an unreadable image the source's
    :class:`~jaxcam.ImageFileError` (a source built with ``on_error="skip"`` leaves it out with a warning and lists
    it under ``skipped`` in ``manifest-<process>.json``), a source (or this process's share) without items
    :class:`~jaxcam.EmptySourceError`, a damaged ``run.json`` :class:`~jaxcam.CorruptFileError`.

    Args:
      similarity: a name in :data:`jaxcam.metrics.robustness.ROBUSTNESS_SIMILARITIES` ("rbo" over Quickshift
        regions by default; pixel-level "spearman", "ssim", "topk_iou", "normalised_l1").
      explain_class: "new_prediction" (the perturbed image's own prediction, default) or "original_prediction".
      key: the seed, 0..2**32-1 (JAX folds other ints onto these).
      image_batch: images per clean pass; chunk: jobs per compiled chunk (bounds memory; padded to a multiple of
        the local device count).
      resume: continue a run already started in ``out_dir`` (its ``run.json`` must match): only missing or damaged
        parts, and the batches whose items changed, are computed; without it an existing non-empty run is an
        error, so nothing is overwritten by accident (in a run of several processes, another process's parts are
        not: each process needs ``resume`` only where it has started before).
      dataset, model_name: the names written in the rows (default: the source's and the architecture's).
      max_chunks: stop after computing this many chunks (tests; a partial run resumes like a killed one).
      process: ``(index, count)`` of this process's share (default ``jax.process_index(), jax.process_count()``):
        process i takes every count-th image of the source and writes its own parts and manifest into the shared
        ``out_dir``.
    Returns:
      the rows of every finished chunk of every process, as :func:`read` gives them.
    """
    from .datasets import as_source

    src = as_source(source)
    shard = _check_process(process)
    cfg, explain_fn = _checked_config(model, src, shard, methods, noises, severities, draws, key, similarity,
                                       explain_class, image_batch, chunk, size, rbo_p, layer, dataset, model_name,
                                       max_chunks)
    out_dir = check_out_dir(out_dir)
    _check_existing(out_dir, cfg, resume, shard[0])
    plan, skipped = _plan(src, cfg, shard)
    _start(out_dir, cfg, shard, src, plan, skipped)
    jobs = cfg.grid().jobs()  # (noise_index, level, draw) arrays, in the grid's documented order
    n_methods = len(cfg.methods)
    done = 0
    bar = _progress(progress, len(plan))
    try:
        for b in plan:
            todo = [(q, c, j) for q, c, j in _chunks(jobs, len(cfg.noises), len(b.ids), cfg.chunk)
                    if not _part_done(_part_path(out_dir, b.digest, q, c), len(j[0]) * n_methods)]
            if todo:
                batch = _reload(src, b, cfg, shard)
                pixels = np.asarray(batch["image"], np.float32)
                labels, counts = rm.quickshift_regions(pixels)
                pred, conf, clean_maps = _clean_pass(model, cfg, layer, pixels)
                hashes = np.asarray([image_hash(i) for i in batch["id"]], np.int32)
                # the region count is padded to a multiple of 64 so batches with similar counts share one program
                st = _Static(model.tapped.plain, explain_fn, cfg.methods, cfg.noises, cfg.similarity,
                             cfg.explain_class,
                             -(-int(counts.max()) // 64) * 64, cfg.rbo_p, tuple(model.mean),
                             tuple(model.std))
                program = _chunk_program(st)
            for q, c, (img, lev, drw) in todo:
                if max_chunks is not None and done >= max_chunks:
                    return read(out_dir)
                rows = _run_chunk(program, model, cfg, b, pixels, labels, counts, clean_maps, pred, conf, hashes,
                                  img, q, lev, drw)
                _write_part(_part_path(out_dir, b.digest, q, c), rows)
                done += 1
            bar.update(1)
    finally:
        bar.close()
    return read(out_dir)


def run_many(models: dict, sources: dict, out_dir: str, **kwargs) -> Table:
    """Models x datasets: :func:`run` for every pair, into ``out_dir/<model>/<dataset>`` (each resumable on its
    own), returning all rows together. ``models``: {name: Model}; ``sources``: {name: source or spec string}; the
    other arguments are :func:`run`'s."""
    tables = []
    for m_name, model in models.items():
        for d_name, source in sources.items():
            tables.append(run(model, source, os.path.join(out_dir, m_name, d_name), dataset=d_name, model_name=m_name,
                              **kwargs))
    return Table.concat(tables) if tables else Table({c: [] for c in COLUMNS})


def _run_chunk(program, model, cfg, b: _Batch, pixels, labels, counts, clean_maps, pred, conf, hashes, img, noise,
               lev, drw) -> dict:
    n = len(img)
    sharding, padded = _mesh_shardings(n)

    def pad(a):  # repeat the first job so the job axis divides over the devices; the extra rows are dropped
        a = np.asarray(a)
        return np.concatenate([a, np.repeat(a[:1], padded - n, 0)]) if padded > n else a

    idx = pad(img)
    args = [pixels[idx], labels[idx], counts[idx], clean_maps[idx], pred[idx].astype(np.int32), hashes[idx],
            pad(lev).astype(np.int32), pad(drw).astype(np.int32)]
    if sharding is not None:
        args = [jax.device_put(a, sharding) for a in args]
    out = program(model.params, *args, np.int32(noise), jax.random.key(cfg.key))
    out = {k: np.asarray(v)[:n] for k, v in out.items()}
    per_job = {"model": [cfg.model] * n, "dataset": [cfg.dataset] * n, "image": np.asarray(b.ids)[img],
               "image_sha256": np.asarray(b.sha256)[img], "noise": [cfg.noises[noise]] * n,
               "severity": lev.astype(int), "draw": drw.astype(int), "pred_before": pred[img].astype(int),
               "conf_before": conf[img].astype(float), "pred_after": out["pred_after"].astype(int),
               "conf_after": out["conf_after"].astype(float),
               "conf_after_original": out["conf_after_original"].astype(float),
               "changed": out["pred_after"] != pred[img], "similarity": [cfg.similarity] * n}
    m = len(cfg.methods)  # rows method-major: every job once per method
    rows = {c: list(np.tile(np.asarray(v), m)) for c, v in per_job.items()}
    rows["method"] = list(np.repeat(cfg.methods, n))
    rows["value"] = list(np.concatenate([out[method].astype(float) for method in cfg.methods]))
    return {c: rows[c] for c in COLUMNS}


def _progress(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="robustness (image batches)", unit="batch", disable=not enabled)


def _listed_batches(out_dir: str) -> set[str]:
    """The digests of the batches every process's manifest lists: the run's data as it was last planned."""
    fix = "resume the run (resume=True, or jaxcam robustness --resume) to write it again"
    names = sorted(f for f in os.listdir(out_dir) if f.startswith("manifest-") and f.endswith(".json"))
    listed = set()
    for f in names:
        path = os.path.join(out_dir, f)
        manifest = _read_json(path, fix)
        try:
            listed.update(str(b["digest"]) for b in manifest["batches"])
        except (KeyError, TypeError):
            raise CorruptFileError(f"{path} does not list the run's batches with their digests: {fix}") from None
    return listed


def read(out_dir: str) -> Table:
    """Every row of the run in ``out_dir``: the parts of the batches its manifests list (all processes'), sorted by
    image, method, noise, severity, draw. Parts of items that changed or left the source since are not read. A
    damaged part raises :class:`~jaxcam.CorruptFileError` naming it (a resume computes it again)."""
    import pyarrow.parquet as pq

    parts_dir = os.path.join(out_dir, "parts")
    files = []
    if os.path.isdir(parts_dir):
        listed = _listed_batches(out_dir)
        files = sorted(f for f in os.listdir(parts_dir) if f.endswith(".parquet") and f.split("-", 1)[0] in listed)
    if not files:
        return Table({c: [] for c in COLUMNS})
    cols = {c: [] for c in COLUMNS}
    for f in files:
        path = os.path.join(parts_dir, f)
        try:
            t = pq.read_table(path, columns=list(COLUMNS)).to_pydict()
        except (OSError, ValueError, KeyError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise CorruptFileError(f"{path} is damaged ({type(exc).__name__}: {_first_line(exc)}); parts are written "
                                   "atomically, so it changed afterwards: resume the run (resume=True, or jaxcam "
                                   "robustness --resume) to compute it again") from None
        for c in COLUMNS:
            cols[c] += t[c]
    order = np.lexsort([np.asarray(cols[k]) for k in ("draw", "severity", "noise", "method", "image")])
    return Table({c: np.asarray(v)[order] for c, v in cols.items()})


def summarise(rows: Table, *, key: int = 0, n_resamples: int = 1000, confidence: float = 0.95,
              combine: str = "product") -> Table:
    """One row per method x noise x severity: C, Rsp, RM with bootstrap intervals, and the counts of both sets."""
    return rm.summary_table(rows, by=("method", "noise", "severity"), similarity_column="value",
                            changed_column="changed", key=key, n_resamples=n_resamples, confidence=confidence,
                            combine=combine)


def run_digest(rows: Table) -> str:
    """A hash of the rows' contents (used to compare a resumed run with an uninterrupted one)."""
    h = hashlib.sha256()
    for c in rows.columns:
        h.update(c.encode())
        h.update(np.asarray(rows[c]).astype(str).tobytes())
    return h.hexdigest()
