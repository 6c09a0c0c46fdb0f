"""Noise robustness of CAMs (Sarkar et al., arXiv 2508.18154): grids of perturbations, RM = Consistency x
Responsiveness, written incrementally to Parquet and resumable.

For each clean image: its prediction, its maps for every method, and its Quickshift regions (computed once). For
every job (image, noise, severity, draw) of the grid: the perturbed image (pixel space, then normalised), its
prediction and maps for every method (one shared forward/backward), and each map's similarity to the clean map
(rank-biased overlap of the region rankings by default). One jitted program evaluates a whole chunk of jobs -- noise,
forward, capture, all methods, region scores, similarity -- with no Python loop over images, noises, severities or
methods; the chunk's job axis is sharded over every local JAX device (data parallel: results do not depend on the
device count), and with several processes (``jax.distributed``) each takes every ``process_count``-th image batch.

Each finished chunk is written to its own Parquet file (atomically: a temporary name, then a rename), named by the
image batch and the chunk, so a run killed at any point and started again skips what exists and computes the rest;
every job's random key depends only on the run key and the job's identity (``jaxcam.noise.job_key``), so the result
equals an uninterrupted run. ``summarise`` pools the rows per method x noise x severity (C, Rsp, RM, counts and
bootstrap intervals) and the statistics module compares methods.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from . import noise as noise_mod
from ._explain import _configure, _program
from .errors import JaxcamError, UnknownNameError
from .files import atomic_write
from .metrics import robustness as rm
from .models.model import StageRange
from .table import Table

PAPER_METHODS = ("gradcam", "gradcam++", "xgradcam", "ablationcam", "hirescam", "eigencam")
TRACES = {"chunk": 0}  # chunk programs traced (a test counts them)
COLUMNS = ("model", "dataset", "image", "method", "noise", "severity", "draw", "pred_before", "conf_before",
           "pred_after", "conf_after", "conf_after_original", "changed", "similarity", "value")


class RunConfigError(JaxcamError, ValueError):
    """A resumed run whose configuration differs from the one its output directory was started with."""


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

    def grid(self) -> noise_mod.Grid:
        return noise_mod.Grid(self.noises, self.severities, self.draws)


def image_hash(image_id) -> int:
    """A stable 31-bit integer for an image id (str or int): it seeds the image's noise keys."""
    return zlib.crc32(str(image_id).encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class _Static:
    graphdef: object
    explain_cfg: object
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
    run = _program(st.graphdef, st.explain_cfg)
    mean = jnp.asarray(st.mean, jnp.float32).reshape(1, 1, 1, -1)
    std = jnp.asarray(st.std, jnp.float32).reshape(1, 1, 1, -1)
    sim = rm.ROBUSTNESS_SIMILARITIES[st.similarity]
    sim_kwargs = {"p": st.rbo_p, "num_regions": st.num_regions} if st.similarity == "rbo" else {}

    forward = StageRange(st.graphdef, 0, st.explain_cfg.n_stages)

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


def _clean_pass(model, cfg: RunConfig, pixels: np.ndarray):
    """Clean predictions, confidences and maps (N, methods, H, W) of a batch of pixel images."""
    from ._explain import explain

    x = model.check_input((pixels - np.asarray(model.arch.mean, np.float32)) / np.asarray(model.arch.std,
                                                                                          np.float32))
    maps, logits, cls = explain(model, x, list(cfg.methods), layer=cfg.layer, preprocessed=True,
                                key=jax.random.key(cfg.key), return_logits=True)
    probs = np.asarray(jax.nn.softmax(logits, -1))
    cls = np.asarray(cls)
    return cls, probs[np.arange(len(cls)), cls], np.stack([np.asarray(maps[m]) for m in cfg.methods], 1)


def _part_path(out_dir: str, batch_index: int, noise_index: int, chunk_index: int) -> str:
    name = f"batch{batch_index:06d}-noise{noise_index:02d}-chunk{chunk_index:05d}.parquet"
    return os.path.join(out_dir, "parts", name)


def _slices(n: int, size: int) -> list[slice]:
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def _write_part(path: str, rows: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path + ".tmp"
    pq.write_table(pa.table(rows), tmp)
    os.replace(tmp, path)  # atomic: a killed run leaves either the whole part or none


def _check_config(out_dir: str, cfg: RunConfig, resume: bool) -> None:
    os.makedirs(os.path.join(out_dir, "parts"), exist_ok=True)
    path = os.path.join(out_dir, "run.json")
    want = asdict(cfg)
    want = json.loads(json.dumps(want))  # tuples as lists, as they read back
    if os.path.exists(path):
        with open(path) as f:
            have = json.load(f)
        if have != want:
            diff = {k: (have.get(k), want[k]) for k in want if have.get(k) != want[k]}
            raise RunConfigError(f"{out_dir} holds a run with another configuration ({diff}); use a new directory")
        if not resume and os.listdir(os.path.join(out_dir, "parts")):
            raise RunConfigError(f"{out_dir} already holds results; pass resume=True to continue that run")
    else:
        atomic_write(path, json.dumps(want, indent=1))


def run(model, source, out_dir: str, *, methods: Sequence[str] = PAPER_METHODS,
        noises: Sequence[str] = ("gaussian", "shot", "impulse", "speckle"), severities: Sequence[int] = (1, 2, 3, 4, 5),
        draws: int = 2, key: int = 0, similarity: str = "rbo", explain_class: str = "new_prediction",
        image_batch: int = 8, chunk: int = 64, size: int = 224, rbo_p: float = 0.9, layer=None,
        dataset: str | None = None, model_name: str | None = None,
        resume: bool = False, progress: bool = True, max_chunks: int | None = None,
        process: tuple[int, int] | None = None) -> Table:
    """Run the robustness grid of ``methods`` x ``noises`` x ``severities`` x ``draws`` over the images of ``source``
    (a :mod:`jaxcam.datasets` source, or a list/array of images) and write its rows under ``out_dir``.

    Args:
      similarity: a name in :data:`jaxcam.metrics.robustness.ROBUSTNESS_SIMILARITIES` ("rbo" over Quickshift
        regions by default; pixel-level "spearman", "ssim", "topk_iou", "normalised_l1").
      explain_class: "new_prediction" (the perturbed image's own prediction, default) or "original_prediction".
      image_batch: images per clean pass (and per unit of work split across processes); chunk: jobs per compiled
        chunk (bounds memory; padded to a multiple of the local device count).
      resume: continue a run already started in ``out_dir`` (its ``run.json`` must match); without it an existing
        non-empty run is an error, so nothing is overwritten by accident.
      dataset, model_name: the names written in the rows (default: the source's and the architecture's).
      max_chunks: stop after computing this many chunks (tests; a partial run resumes like a killed one).
      process: ``(index, count)`` of this process's share (default ``jax.process_index(), jax.process_count()``):
        process i takes every count-th image of the source and writes its own part files into the shared
        ``out_dir``.
    Returns:
      the rows of every finished chunk (this process's share), as :func:`read` gives them.
    """
    from .datasets import as_source

    src = as_source(source)
    shard = (jax.process_index(), jax.process_count()) if process is None else tuple(int(v) for v in process)
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"process must be (index, count) with 0 <= index < count, got {process!r}")
    methods = tuple(methods)
    if explain_class not in ("new_prediction", "original_prediction"):
        raise ValueError(f"explain_class must be 'new_prediction' or 'original_prediction', got {explain_class!r}")
    if similarity not in rm.ROBUSTNESS_SIMILARITIES:
        raise UnknownNameError(similarity, rm.ROBUSTNESS_SIMILARITIES, "robustness similarity")
    cfg = RunConfig(model_name or model.name, str(model.source), dataset or src.name, methods, tuple(noises),
                    tuple(int(s) for s in severities), int(draws), int(key), similarity, explain_class,
                    int(image_batch), int(chunk), int(size), float(rbo_p), None if layer is None else str(layer),
                    int(shard[1]))
    grid = cfg.grid()
    jobs = grid.jobs()  # (noise_index, level, draw) arrays, in the grid's documented order
    _check_config(out_dir, cfg, resume)
    explain_cfg, _ = _configure(model, list(methods), layer, batch_size=None)
    done = 0
    batches = src.batches(image_batch, size=size, shard=shard)
    bar = _progress(progress, src, image_batch, shard)
    for k, batch in enumerate(batches):
        b_index = k * shard[1] + shard[0]  # unique across processes: process p writes batches p, p + n, ...
        n_img = len(batch["id"])
        # jobs grouped by noise (one noise per chunk: the chunk program switches on one traced noise index, so only
        # that noise is computed), image-major inside a noise
        plan = []
        for q in range(len(cfg.noises)):
            sel = jobs[0] == q
            lev_q, drw_q = np.tile(jobs[1][sel], n_img), np.tile(jobs[2][sel], n_img)
            img_q = np.repeat(np.arange(n_img), int(sel.sum()))
            plan += [(q, c, (img_q[sl], lev_q[sl], drw_q[sl])) for c, sl in enumerate(_slices(len(img_q), chunk))]
        todo = [(q, c, j) for q, c, j in plan if not os.path.exists(_part_path(out_dir, b_index, q, c))]
        if todo:
            pixels = np.asarray(batch["image"], np.float32)
            labels, counts = rm.quickshift_regions(pixels)
            pred, conf, clean_maps = _clean_pass(model, cfg, pixels)
            hashes = np.asarray([image_hash(i) for i in batch["id"]], np.int32)
            # the region count is padded to a multiple of 64 so batches with similar counts share one program
            st = _Static(model.graphdef, explain_cfg, methods, cfg.noises, similarity, explain_class,
                         -(-int(counts.max()) // 64) * 64, cfg.rbo_p, tuple(model.arch.mean), tuple(model.arch.std))
            program = _chunk_program(st)
        for q, c, (img, lev, drw) in todo:
            if max_chunks is not None and done >= max_chunks:
                bar.close()
                return read(out_dir)
            rows = _run_chunk(program, model, cfg, batch, pixels, labels, counts, clean_maps, pred, conf, hashes,
                              img, q, lev, drw)
            _write_part(_part_path(out_dir, b_index, q, c), rows)
            done += 1
        bar.update(1)
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


def _run_chunk(program, model, cfg, batch, pixels, labels, counts, clean_maps, pred, conf, hashes, img, noise, lev,
               drw) -> dict:
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
    per_job = {"model": [cfg.model] * n, "dataset": [cfg.dataset] * n,
               "image": np.asarray(batch["id"]).astype(str)[img], "noise": [cfg.noises[noise]] * n,
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


def _progress(enabled: bool, src, image_batch: int, shard):
    try:
        n = len(src)
    except TypeError:
        n = None
    total = None if n is None else -(-len(range(shard[0], n, shard[1])) // image_batch)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="robustness (image batches)", unit="batch", disable=not enabled)


def read(out_dir: str) -> Table:
    """Every row written under ``out_dir`` (all processes' parts), sorted by image, method, noise, severity, draw."""
    import pyarrow.parquet as pq

    parts_dir = os.path.join(out_dir, "parts")
    files = sorted(f for f in os.listdir(parts_dir) if f.endswith(".parquet")) if os.path.isdir(parts_dir) else []
    if not files:
        return Table({c: [] for c in COLUMNS})
    cols = {c: [] for c in COLUMNS}
    for f in files:
        t = pq.read_table(os.path.join(parts_dir, f)).to_pydict()
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
