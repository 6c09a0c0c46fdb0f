"""``jaxcam.evaluate``: methods and metrics together, one tidy table (a row per image x method x metric).

The methods run in one :func:`jaxcam.explain` call (one shared forward/backward for the gradient family); each
metric family then runs once per method, in its own compiled program, over the whole batch. Metrics that share work
are computed together (deletion and insertion from one set of curves; ROAD's combined score from its two averaged
halves). :data:`METRICS` lists every metric with its direction and what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from . import metrics as M
from ._explain import _resolve_methods, explain
from .errors import InvalidArgumentError, UnknownNameError
from .keys import as_key
from .table import Table


@dataclass(frozen=True)
class MetricSpec:
    """``group``: metrics computed together; ``higher_is_better``; ``needs``: "maps", "model", "masks" (ground
    truth) or "method" (re-explains perturbed images)."""

    name: str
    family: str
    group: str
    higher_is_better: bool
    needs: str
    parity: str


TC, PGC, Q = "torchcam 0.5.0", "pytorch-grad-cam 1.5.7", "Quantus 0.6.0"
CF, BT = "closed-form tests", "behavioural tests"


def _spec(name, family, group, higher, needs, parity):
    return name, MetricSpec(name, family, group, higher, needs, parity)


METRICS: dict[str, MetricSpec] = dict([
    _spec("deletion_auc", "faithfulness", "deletion_insertion", False, "model", TC),
    _spec("insertion_auc", "faithfulness", "deletion_insertion", True, "model", TC),
    _spec("road_combined", "faithfulness", "road", True, "model", PGC),
    _spec("road_morf", "faithfulness", "road", False, "model", PGC),
    _spec("road_lerf", "faithfulness", "road", True, "model", PGC),
    _spec("average_drop", "faithfulness", "average_drop", False, "model", TC),
    _spec("increase_in_confidence", "faithfulness", "increase_in_confidence", True, "model", TC),
    _spec("cam_mult_confidence_change", "faithfulness", "cam_mult_confidence_change", True, "model", PGC),
    _spec("relative_confidence_drop", "faithfulness", "relative_confidence_drop", True, "model", CF),
    _spec("faithfulness_correlation", "faithfulness", "faithfulness_correlation", True, "model", CF),
    _spec("region_ablation_drop", "faithfulness", "region_ablation", True, "model", BT),
    _spec("pointing_game", "localisation", "pointing_game", True, "masks", Q),
    _spec("energy_pointing_game", "localisation", "energy_pointing_game", True, "masks", CF),
    _spec("relevance_mass_accuracy", "localisation", "relevance_mass_accuracy", True, "masks", Q),
    _spec("relevance_rank_accuracy", "localisation", "relevance_rank_accuracy", True, "masks", Q),
    _spec("iou", "localisation", "iou", True, "masks", CF),
    _spec("sparseness", "complexity", "sparseness", True, "maps", Q),
    _spec("entropy", "complexity", "entropy", False, "maps", Q),
    _spec("max_sensitivity", "stability", "sensitivity", False, "method", BT),
    _spec("avg_sensitivity", "stability", "sensitivity", False, "method", BT),
    _spec("local_lipschitz", "stability", "local_lipschitz", False, "method", BT),
])

def markdown_table() -> str:
    """The README's metric table, generated from :data:`METRICS` (a test keeps the two equal)."""
    lines = ["| metric | family | better | needs | checked against |", "|---|---|---|---|---|"]
    lines += [f"| `{s.name}` | {s.family} | {'higher' if s.higher_is_better else 'lower'} | {s.needs} | {s.parity} |"
              for s in METRICS.values()]
    return "\n".join(lines)


DEFAULT_METRICS = ("deletion_auc", "insertion_auc", "road_combined", "average_drop", "increase_in_confidence",
                   "sparseness")


def _group_fn(group: str) -> Callable:
    """``fn(ctx, cams, method, wanted, opts) -> {metric: (N,)}`` for one group."""
    def deletion_insertion(c, cams, method, wanted, o):
        r = M.deletion_insertion(c.model, c.x, cams, c.classes, batch_size=c.batch_size, **o)
        return {"deletion_auc": r.deletion_auc, "insertion_auc": r.insertion_auc}

    def road(c, cams, method, wanted, o):
        o = {"key": c.key, "batch_size": c.batch_size, **o}
        if wanted == {"road_combined"}:
            return {"road_combined": M.road(c.model, c.x, cams, c.classes, which="combined", **o)}
        k1, k2 = jax.random.split(o.pop("key"))  # the keys road(which="combined") uses for its two halves
        lerf = M.road(c.model, c.x, cams, c.classes, which="lerf", key=k1, **o)
        morf = M.road(c.model, c.x, cams, c.classes, which="morf", key=k2, **o)
        return {"road_combined": (lerf - morf) / 2, "road_morf": morf, "road_lerf": lerf}

    def model_metric(fn, name, keyed=False, batched=False):
        def run(c, cams, method, wanted, o):
            extra = ({"key": c.key} if keyed else {}) | ({"batch_size": c.batch_size} if batched else {})
            return {name: fn(c.model, c.x, cams, c.classes, **extra, **o)}
        return run

    def region_ablation(c, cams, method, wanted, o):
        from .regions import EmptyRegionsError

        o = {"key": c.key, **({"batch_size": c.batch_size} if c.batch_size else {}), **o}
        try:
            return {"region_ablation_drop": M.region_ablation_drop(c.model, c.x, cams, c.classes, **o)}
        except EmptyRegionsError as exc:  # say which method's map it was, and the evaluate spelling of the option
            raise EmptyRegionsError(f"region_ablation_drop of {method}'s maps: {exc} (in evaluate: metric_options="
                                    "{'region_ablation': {'empty': 'zero'}})") from None

    def mask_metric(fn, name):
        return lambda c, cams, method, wanted, o: {name: fn(cams, c.masks, **o)}

    def map_metric(fn, name):
        return lambda c, cams, method, wanted, o: {name: fn(cams, **o)}

    def sensitivity(c, cams, method, wanted, o):
        r = M.sensitivity(c.model, c.x, method, c.classes, layer=c.layer, key=c.key, **c.method_options(method), **o)
        return {"max_sensitivity": r.max, "avg_sensitivity": r.avg}

    def lipschitz(c, cams, method, wanted, o):
        return {"local_lipschitz": M.local_lipschitz(c.model, c.x, method, c.classes, layer=c.layer, key=c.key,
                                                     **c.method_options(method), **o)}

    table = {
        "deletion_insertion": deletion_insertion, "road": road,
        "average_drop": model_metric(M.average_drop, "average_drop"),
        "increase_in_confidence": model_metric(M.increase_in_confidence, "increase_in_confidence"),
        "cam_mult_confidence_change": model_metric(M.cam_mult_confidence_change, "cam_mult_confidence_change"),
        "relative_confidence_drop": model_metric(M.relative_confidence_drop, "relative_confidence_drop"),
        "faithfulness_correlation": model_metric(M.faithfulness_correlation, "faithfulness_correlation",
                                                 keyed=True, batched=True),
        "region_ablation": region_ablation,
        "pointing_game": mask_metric(M.pointing_game, "pointing_game"),
        "energy_pointing_game": mask_metric(M.energy_pointing_game, "energy_pointing_game"),
        "relevance_mass_accuracy": mask_metric(M.relevance_mass_accuracy, "relevance_mass_accuracy"),
        "relevance_rank_accuracy": mask_metric(M.relevance_rank_accuracy, "relevance_rank_accuracy"),
        "iou": mask_metric(M.iou, "iou"),
        "sparseness": map_metric(M.sparseness, "sparseness"), "entropy": map_metric(M.entropy, "entropy"),
        "sensitivity": sensitivity, "local_lipschitz": lipschitz,
    }
    return table[group]


@dataclass
class _Context:
    model: object
    x: jax.Array
    classes: jax.Array
    masks: object
    layer: object
    key: jax.Array
    batch_size: int | None
    options: Mapping

    def method_options(self, method):
        opts = self.options.get(method)
        return {"method_options": {method: opts}} if opts else {}


def evaluate(model, images, methods: str | Sequence[str] = ("gradcam",), metrics: Sequence[str] = DEFAULT_METRICS,
             targets=None, *, layer=None, masks=None, boxes=None, preprocessed: bool = False, key=0,
             batch_size: int | None = None, metric_options: Mapping[str, Mapping] | None = None,
             method_options: Mapping[str, Mapping] | None = None, return_maps: bool = False):
    """Explain ``images`` with every method in ``methods`` and score the maps with every metric in ``metrics``.

    Args:
      targets: None (each image's predicted class) or class indices; every metric evaluates the same class.
      masks, boxes: ground truth for the localisation metrics ((N, H, W) masks at input size, or per-image boxes
        ``(y0, x0, y1, x1)`` in input pixels).
      metric_options: ``{group: {option: value}}`` passed to each metric function, the group being the name in
        :data:`METRICS` (e.g. ``{"deletion_insertion": {"steps": 50}, "road": {"percentiles": (20, 80)}}``).
      key: the seed or key of every random choice (ROAD's noise, faithfulness correlation's subsets, the noise of
        the stability metrics).
      return_maps: also return the maps the metrics scored and the classes they explain, so a caller that shows
        the maps (``jaxcam evaluate``'s pictures) does not explain the images a second time.
    Returns:
      a :class:`jaxcam.table.Table` with columns image, class, method, metric, value, higher_is_better; with
      ``return_maps=True`` the tuple ``(table, {method: maps (N, H, W)}, classes (N,))``.
    """
    names = _resolve_methods(methods)
    if isinstance(metrics, str):
        metrics = (metrics,)
    for m in metrics:
        if m not in METRICS:
            raise UnknownNameError(m, METRICS, "metric")
    groups = list(dict.fromkeys(METRICS[m].group for m in metrics))
    metric_options = dict(metric_options or {})
    for g in metric_options:
        if g not in {s.group for s in METRICS.values()}:
            raise UnknownNameError(g, sorted({s.group for s in METRICS.values()}), "metric_options group")
    x = model.check_input(images if preprocessed else model.preprocess(images))
    size = tuple(x.shape[1:3])
    if any(METRICS[m].needs == "masks" for m in metrics):
        if masks is None and boxes is None:
            need = [m for m in metrics if METRICS[m].needs == "masks"]
            raise InvalidArgumentError(f"the localisation metric(s) {', '.join(need)} need ground truth: pass masks= or "
                                       "boxes= (masks (N, H, W) at the input size, or per image one (B, 4) array of "
                                       "(y0, x0, y1, x1) boxes), or leave these metrics out")
        masks = M.boxes_to_masks(boxes, size) if masks is None else np.asarray(masks)
    maps, _, cls = explain(model, x, list(names), targets, layer, preprocessed=True, key=key,
                           batch_size=batch_size, method_options=dict(method_options or {}), return_logits=True)
    key = as_key(key)
    ctx = _Context(model, x, cls, masks, layer, key, batch_size, dict(method_options or {}))
    rows = []
    n = x.shape[0]
    for method in names:
        for g in groups:
            wanted = {m for m in metrics if METRICS[m].group == g}
            values = _group_fn(g)(ctx, maps[method], method, wanted, dict(metric_options.get(g, {})))
            for m in metrics:
                if m in wanted:
                    v = np.asarray(values[m], np.float64)
                    rows += [{"image": i, "class": int(cls[i]), "method": method, "metric": m, "value": float(v[i]),
                              "higher_is_better": METRICS[m].higher_is_better} for i in range(n)]
    table = Table.from_rows(rows, ["image", "class", "method", "metric", "value", "higher_is_better"])
    return (table, {m: maps[m] for m in names}, cls) if return_maps else table
