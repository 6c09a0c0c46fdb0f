"""ROAD: Remove And Debias (Rong et al., ICML 2022), pytorch-grad-cam 1.5.7's variant, jit-able.

Noisy linear imputation: every removed pixel equals the weighted mean of its in-image 8-neighbours (1/6 for edge
neighbours, 1/12 for diagonal ones, the weights renormalised where neighbours fall outside the image), known pixels
fixed. The reference solves that sparse system per image with ``scipy.sparse.linalg.spsolve`` on the CPU; here it
is solved matrix-free by conjugate gradients (the system is symmetric positive semi-definite), vmapped over images
and percentiles inside one program. Noise ``noise * N(0, 1)`` is added to the imputed pixels from an explicit key
(the reference's noise is unseeded; compare with ``noise=0``). On a CPU each solve is one thread's work, so
there the chunks of imputations and forwards run as separate calls of one compiled program from ``workers`` host
threads at once (one per core by default): the same jobs, keys and results as the single program, which
accelerators keep (their imputations vmapped). The official ROAD code imputes the un-normalised
[0, 1] image, pytorch-grad-cam the normalised tensor; the imputation itself is the same either way (each removed
pixel is a weighted mean, which commutes with the per-channel affine normalisation), so the two differ only in the
units of the noise: ``space="pixel"`` (default, the official code) draws it in pixel units, i.e. ``noise / std`` per
channel of the normalised input; ``space="normalised"`` is pytorch-grad-cam's.

``RemoveMostRelevantFirst(p)`` keeps the pixels whose map value is below the p-th percentile and imputes the rest
(so MoRF at p removes the top ``100 - p`` %); least-relevant-first applies the same to ``1 - map``. Each score is
``target(f(x_imputed)) - target(f(x))``; the averaged variants average over ``percentiles`` and
``combined = (LeRF - MoRF) / 2``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError, UnknownNameError
from ..imputation import (PERCENTILES, impute, road_average, road_chunk, road_chunks,  # noqa: F401 - re-exported
                          road_combined_scores, road_scores)
from ..keys import as_key

def road(model, x, cams, targets=None, *, which: str = "combined", percentiles=PERCENTILES, noise: float = 0.01,
         key=0, target="probability", batch_size: int | None = None, space: str = "pixel",
         workers: int | None = None):
    """ROAD scores (N,) of maps ``cams`` (N, H, W) in [0, 1] for a preprocessed batch ``x`` under ``model``.

    ``which``: "combined", "morf" or "lerf" (the averaged variants; one percentile gives pytorch-grad-cam's
    single-threshold classes). ``target``: the score the change is measured in (default: the softmax
    probability, as pytorch-grad-cam's examples use). ``targets``: None (predicted classes) or class indices.
    ``batch_size``: imputed images per forward (default 8 on CPU, 64 on accelerators).
    ``space``: the units of ``noise`` ("pixel": the official ROAD code; "normalised": pytorch-grad-cam's).
    ``workers``: on a CPU, host threads running chunks at once (default: the cores this process may use; 1: one
    program for everything). Ignored on accelerators, where one program vmaps the imputations.
    Matches pytorch-grad-cam 1.5.7 with ``noise=0`` (or with its noise, ``space="normalised"``).
    """
    from .. import targets as targets_mod
    from .inputs import default_batch_size, model_inputs

    if which not in ("combined", "morf", "lerf"):
        raise UnknownNameError(which, ("combined", "morf", "lerf"), "ROAD variant")
    if not percentiles or not all(0 < p < 100 for p in percentiles):
        raise InvalidArgumentError(f"percentiles must be a non-empty sequence of values in (0, 100), got {percentiles!r}")
    if space not in ("pixel", "normalised"):
        raise UnknownNameError(space, ("pixel", "normalised"), "ROAD noise space")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise InvalidArgumentError(f"workers must be a positive int, got {workers!r}")
    x, cams, classes = model_inputs(model, x, cams, targets)
    noise = tuple(float(noise) / s for s in model.std) if space == "pixel" else float(noise)
    key = as_key(key)
    config = (model.tapped.plain, targets_mod.resolve(target), tuple(percentiles), noise, default_batch_size(batch_size))
    workers = _cpu_workers() if workers is None else int(workers)
    if jax.default_backend() == "cpu" and workers > 1:
        return _road_threaded(config, which, workers, model.params, x, cams, classes, key)
    return _road_program(*config[:2], which, *config[2:])(model.params, x, cams, classes, key)


def _cpu_workers() -> int:
    """The cores this process may run on (its affinity where the platform says, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def road_combined(model, x, cams, targets=None, **options) -> jax.Array:
    """The ``road_combined`` metric (N,): :func:`road` with ``which="combined"`` (higher is better)."""
    return road(model, x, cams, targets, which="combined", **options)


def road_morf(model, x, cams, targets=None, **options) -> jax.Array:
    """The ``road_morf`` metric (N,): :func:`road` with ``which="morf"`` (most relevant first; lower is better)."""
    return road(model, x, cams, targets, which="morf", **options)


def road_lerf(model, x, cams, targets=None, **options) -> jax.Array:
    """The ``road_lerf`` metric (N,): :func:`road` with ``which="lerf"`` (least relevant first; higher is better)."""
    return road(model, x, cams, targets, which="lerf", **options)


_PROGRAMS: dict = {}


def _road_program(stage_range, score, which, percentiles, noise, batch_size):
    cache_key = (stage_range, score, which, percentiles, noise, batch_size)
    if cache_key not in _PROGRAMS:
        def run(params, x, cams, classes, key):
            forward = jax.tree_util.Partial(stage_range, params)
            cls = jnp.argmax(forward(x), -1) if classes is None else classes
            if which == "combined":
                return road_combined_scores(forward, score, x, cams, cls, percentiles, noise, key, batch_size)
            return road_scores(forward, score, x, cams, cls, percentiles, which == "morf", noise, key, batch_size)
        _PROGRAMS[cache_key] = jax.jit(run)
    return _PROGRAMS[cache_key]


def _road_threaded(config, which, workers, params, x, cams, classes, key):
    """ROAD on a CPU: the imputation chunks of :func:`road_scores` (both halves for "combined", with the keys
    :func:`road_combined_scores` gives them) as calls of one compiled chunk program from ``workers`` host threads,
    so that the single-threaded conjugate-gradient solves run side by side; the same scores as one program."""
    stage_range, score, percentiles, noise, batch_size = config
    prologue, chunk = _chunk_programs(stage_range, score, percentiles, noise)
    n, n_p = x.shape[0], len(percentiles)
    base, cls = prologue(params, x, classes)
    if which == "combined":  # LeRF with the first key, MoRF with the second
        k1, k2 = jax.random.split(key)
        halves = ((False, k1), (True, k2))
    else:
        halves = ((which == "morf", key),)
    halves = [(jnp.asarray(mrf), jax.random.split(k, (n, n_p))) for mrf, k in halves]  # once per half, not per job
    jobs = [(h, mrf, keys, ks) for h, (mrf, keys) in enumerate(halves) for ks in road_chunks(n, n_p, batch_size)]

    def run(job):
        _, mrf, keys, ks = job
        return jax.block_until_ready(chunk(params, x, cams, cls, mrf, keys, ks))  # block: the thread does the work

    first = run(jobs[0])  # compiles once, before the threads share the program
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        rest = list(pool.map(run, jobs[1:]))
    scores = [first] + rest
    avg = [road_average(jnp.stack([s for (h, *_), s in zip(jobs, scores) if h == i]), base, n, n_p)
           for i in range(len(halves))]
    return avg[0] if len(avg) == 1 else (avg[0] - avg[1]) / 2


def _chunk_programs(stage_range, score, percentiles, noise):
    cache_key = ("chunks", stage_range, score, percentiles, noise)
    if cache_key not in _PROGRAMS:
        @jax.jit
        def prologue(params, x, classes):
            logits = stage_range(params, x)
            cls = jnp.argmax(logits, -1) if classes is None else classes
            return jax.vmap(score)(logits, cls), cls

        @jax.jit
        def chunk(params, x, cams, cls, most_relevant_first, keys, ks):
            forward = jax.tree_util.Partial(stage_range, params)
            pct = jnp.asarray(percentiles, x.dtype)
            return road_chunk(forward, score, x, cams, cls, pct, most_relevant_first, noise, keys, ks)

        _PROGRAMS[cache_key] = (prologue, chunk)
    return _PROGRAMS[cache_key]
