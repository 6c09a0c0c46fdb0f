"""What the training experiments report: accuracy, localisation against ground-truth masks, map statistics and
intervals over seeds. Thin, batched wrappers over :func:`jaxcam.explain` and :mod:`jaxcam.metrics.localisation`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from .._explain import explain
from ..errors import InvalidArgumentError
from ..metrics.localisation import energy_pointing_game, iou, pointing_game

THRESHOLDS = tuple(float(t) for t in np.linspace(0.05, 0.95, 19))


def _check_images(images, what="images") -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InvalidArgumentError(f"{what} must be (N, S, S, 3) RGB in [0, 1], got shape {images.shape}")
    return images


def predict_accuracy(model, images, labels, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``images`` (N, S, S, 3) in [0, 1] against integer ``labels``."""
    images = _check_images(images)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise InvalidArgumentError(f"{len(images)} images but {len(labels)} labels")
    fwd = jax.jit(model.tapped.forward)
    hits = 0
    for i in range(0, len(images), batch_size):
        x = model.preprocess(images[i:i + batch_size])
        hits += int(np.sum(np.asarray(jnp.argmax(fwd(model.params, x), axis=-1)) == labels[i:i + batch_size]))
    return hits / max(len(images), 1)


def localisation(model, images, masks, labels, methods: Sequence[str] = ("gradcam",), layer=None,
                 batch_size: int = 64, method_options: dict | None = None,
                 thresholds: Sequence[float] = THRESHOLDS) -> dict[str, dict]:
    """Explain the true ``labels`` with each method and score the maps against ``masks`` (N, S, S).

    Returns ``{method: {"maps", "pointing_game", "iou_best", "best_threshold", "energy_pointing_game"}}``:
    ``maps`` (N, S, S) in [0, 1]; the pointing game (no tolerance) and the energy pointing game as means over
    images; ``iou_best``: the best over ``thresholds`` of the mean IoU of ``{map >= t}`` with the mask (the
    threshold chosen on the same images, as WSOL papers report "IoU at the best threshold")."""
    images = _check_images(images)
    masks = np.asarray(masks, bool)
    labels = np.asarray(labels).reshape(-1)
    if masks.shape != images.shape[:3] or len(labels) != len(images):
        raise InvalidArgumentError(f"masks must be (N, S, S) and labels (N,) for {images.shape[0]} images of "
                                   f"{images.shape[1]}x{images.shape[2]}; got masks {masks.shape}, labels "
                                   f"{labels.shape}")
    methods = [methods] if isinstance(methods, str) else list(methods)
    maps = {m: [] for m in methods}
    for i in range(0, len(images), batch_size):
        out = explain(model, images[i:i + batch_size], method=methods, targets=labels[i:i + batch_size].tolist(),
                      layer=layer, method_options=method_options)
        for m in methods:
            maps[m].append(np.asarray(out[m]))
    result = {}
    gt = jnp.asarray(masks)
    for m in methods:
        cams = np.concatenate(maps[m])
        c = jnp.asarray(cams)
        ious = [float(jnp.mean(iou(c, gt, threshold=t))) for t in thresholds]
        best = int(np.argmax(ious))
        result[m] = {"maps": cams, "pointing_game": float(jnp.mean(pointing_game(c, gt))),
                     "iou_best": ious[best], "best_threshold": float(thresholds[best]),
                     "energy_pointing_game": float(jnp.mean(energy_pointing_game(c, gt)))}
    return result


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half_width)`` of the Student-t interval of the mean over ``values`` (seeds); half-width 0 for one
    value (no spread can be estimated: report the single number as such)."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        raise InvalidArgumentError("mean_interval needs at least one value")
    if v.size == 1:
        return float(v[0]), 0.0
    half = stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def map_entropy(maps) -> np.ndarray:
    """(N,) entropy in nats of each map read as a distribution ``q = L / sum L`` (negative values clipped to 0);
    an all-zero map has entropy 0."""
    from .sham import distribution_entropy  # the one definition, which SHAM's loss differentiates

    m = np.clip(np.asarray(maps, np.float32), 0, None).reshape(len(maps), -1)
    return np.asarray(distribution_entropy(m, axes=-1))


def pearson(a, b) -> np.ndarray:
    """(N,) Pearson correlation of each pair of maps; 0 where either map is constant. Computed in float64 on the
    host (a report statistic), where :func:`jaxcam.metrics.similarity.pearson` is the float32 metric."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.divide((a * b).sum(1), den, out=np.zeros(len(a)), where=den > 0)


def experiment_parser(description: str, out: Path) -> argparse.ArgumentParser:
    """The arguments every training experiment in ``scripts/`` shares: ``--quick``, ``--seeds``, the data
    (``--dataset synthetic`` or ``tfds:NAME``, ``--test-split``, ``--classes``, ``--size``, ``--train-images``,
    ``--test-images``), the network's ``--widths`` and ``--out``; each script adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, few steps, few images")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--train-images", type=int, default=4096)
    p.add_argument("--test-images", type=int, default=512)
    p.add_argument("--dataset", default="synthetic", help="'synthetic' or tfds:NAME (train split; test: --test-split)")
    p.add_argument("--test-split", default="validation")
    p.add_argument("--out", type=Path, default=out)
    return p


def experiment_data(dataset: str, seed: int, *, train_images: int, test_images: int, size: int, num_classes: int,
                    test_split: str = "validation", **synthetic) -> tuple[dict, dict]:
    """``(train, test)`` dicts of arrays for an experiment: the synthetic benchmark's splits drawn from ``seed``
    (``synthetic`` options such as ``spurious=True`` passed on), or a tensorflow-datasets dataset
    (``tfds:NAME`` reads split ``train``, or the split the spec names, and ``test_split``; no masks then)."""
    if dataset == "synthetic":
        from ..synthetic import synthetic_arrays

        kw = dict(size=size, num_classes=num_classes, **synthetic)
        return (synthetic_arrays(seed, train_images, **kw),
                synthetic_arrays(seed, test_images, split="test", **kw))
    from .pipeline import load_data

    spec = dataset if dataset.count(":") >= 2 else f"{dataset}:train"
    name = spec.rsplit(":", 1)[0]
    return load_data(spec, size, num_classes), load_data(f"{name}:{test_split}", size, num_classes)


__all__ = ["THRESHOLDS", "experiment_data", "experiment_parser", "localisation", "map_entropy", "mean_interval", "pearson", "predict_accuracy"]
