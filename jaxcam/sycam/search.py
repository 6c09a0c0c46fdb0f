"""SyCAM's search: bottom-up enumeration of channel-weight expressions with observational-equivalence pruning, a
beam that grows the best ones, and candidates scored in vmapped batches by any :data:`jaxcam.METRICS` entry.

The loop (a reconstruction of the paper's oracle-guided synthesis; see ../shared/reference/methods.md, SyCAM):

1. **Terminals, once.** One forward and one backward per image give A and G (G2, G3 follow); the Score-CAM term S
   costs K forwards per image and the Ablation term D K head passes, so they are computed only when the grammar
   has them. Every candidate afterwards is arithmetic on these cached arrays: no model pass per candidate.
2. **Enumeration by size** (number of nodes), typed: spatial terms combine with spatial or channel terms, the
   reductions turn spatial into channel, only channel expressions are candidates. Commutative operators are
   enumerated in one order, operators on constants alone are skipped.
3. **Equivalence oracle.** Each new expression is evaluated on the search images; one whose values on the first
   ``probe`` images equal (to 6 significant digits) those of an expression already kept is dropped, and so is any
   with a non-finite value. A candidate whose weights are a positive per-image multiple of an already scored one
   draws the same maps and is not scored again.
4. **Correctness oracle.** Candidates are scored ``score_batch`` at a time: the weights (B, N, K) become maps in one
   jitted, vmapped program (the pytorch-grad-cam chain: ReLU, min-max, bilinear resize), and the metric runs once
   on all B x N maps (model metrics on the images tiled B times).
5. **Beam.** The ``beam`` best candidates are grown ``rounds`` times: each through every channel-to-channel unary
   operator, combined with every small channel term (size <= 2, constants included) on either side, and with
   each other.

The best expression on the search images is :attr:`SearchResult.best`; :func:`held_out` scores it beside the
built-in CAMs on other images through :func:`jaxcam.evaluate` and the registered ``sycam`` method.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from .. import targets as targets_mod
from ..errors import InvalidArgumentError, UnknownNameError
from ..evaluate import METRICS, _Context, _group_fn, evaluate
from ..keys import as_key
from ..methods.base import Context, Inputs
from ..methods.sycam import terminal_values
from ..postprocess import postprocess
from ..tapped import Forward, Replay, capture
from .expr import (BINARY, CHANNEL, KNOWN, REDUCTIONS, SPATIAL, TERMINALS, UNARY, Expr, apply_binary, apply_unary,
                   const, parse, type_of)
from .expr import evaluate as evaluate_expr

COMMUTATIVE = ("+", "*")


@dataclass(frozen=True)
class Grammar:
    """What the search may use: terminal names, constants, unary and binary operators (see :mod:`.expr`)."""

    terminals: tuple[str, ...] = TERMINALS
    constants: tuple[float, ...] = (0.5, 1.0, 2.0)
    unary: tuple[str, ...] = UNARY
    binary: tuple[str, ...] = BINARY

    def __post_init__(self):
        for names, valid, what in ((self.terminals, TERMINALS, "SyCAM terminal"), (self.unary, UNARY, "SyCAM unary "
                                   "operator"), (self.binary, BINARY, "SyCAM binary operator")):
            if isinstance(names, str):
                raise InvalidArgumentError(f"Grammar: give a tuple of names, not the string {names!r}")
            for n in names:
                if n not in valid:
                    raise UnknownNameError(n, valid, what)
        if not self.terminals:
            raise InvalidArgumentError("Grammar: at least one terminal is needed")
        for c in self.constants:
            const(c)

    def allows(self, e: Expr) -> bool:
        """Whether ``e`` can be written in this grammar (its terminals, constants and operators)."""
        if e.op == "const":
            return e.value in self.constants
        if e.op in TERMINALS:
            return e.op in self.terminals
        ok = e.op in self.unary if e.op in UNARY else e.op in self.binary
        return ok and all(self.allows(a) for a in e.args)


@dataclass
class SearchResult:
    """``best``: the best expression on the search images and ``best_score`` its mean metric; ``top``: the best
    ``(expression, score)`` pairs, best first; ``known``: the search-set score of each :data:`KNOWN` CAM whose
    terminals were computed (:meth:`Grammar.allows` says whether the search could write it); counts (``enumerated`` expressions built, ``pruned`` by equivalence or non-finite values,
    ``scored`` candidates) and seconds (``terminal_seconds``, ``enumeration_seconds``, ``scoring_seconds`` without
    the scorer's compile, ``compile_seconds``); ``candidates_per_second = scored / scoring_seconds``."""

    best: Expr
    best_score: float
    metric: str
    higher_is_better: bool
    top: list[tuple[Expr, float]]
    known: dict[str, float]
    enumerated: int
    pruned: int
    scored: int
    terminal_seconds: float
    enumeration_seconds: float
    scoring_seconds: float
    compile_seconds: float
    by_stage: list[dict] = field(default_factory=list)

    @property
    def candidates_per_second(self) -> float:
        return self.scored / self.scoring_seconds if self.scoring_seconds > 0 else float("nan")

    def summary(self) -> str:
        lines = [f"SyCAM on {self.metric} ({'higher' if self.higher_is_better else 'lower'} is better): best "
                 f"{self.best}  score {self.best_score:.4f}",
                 f"  {self.enumerated} expressions built, {self.pruned} pruned as equivalent or non-finite, "
                 f"{self.scored} candidates scored at {self.candidates_per_second:.0f}/s "
                 f"(compile {self.compile_seconds:.1f} s, terminals {self.terminal_seconds:.1f} s)"]
        lines += [f"  known {k}: {v:.4f}" for k, v in self.known.items()]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- terminals

@functools.lru_cache(maxsize=16)
def _terminal_program(tapped, site: str, names: tuple[str, ...], score, batch_size: int):
    grads = any(n in ("G", "G2", "G3") for n in names)

    def run(params, x, classes):
        cap = capture(tapped.apply, params, x, (site,), (score,) if grads else (), classes)
        ctx = Context(replay=jax.tree_util.Partial(Replay(tapped.apply, site), params),
                      forward=jax.tree_util.Partial(Forward(tapped.apply), params), score=score,
                      batch_size=batch_size)
        keys = jnp.zeros((x.shape[0], 2), jnp.uint32)
        inputs = Inputs(cap.acts[site], cap.grads[score][site] if grads else None, None, cap.logits, cap.classes, x,
                        keys)
        return jax.vmap(lambda inp: terminal_values(inp, ctx, names))(inputs), cap.classes

    return jax.jit(run)


def compute_terminals(model, x, classes=None, layer=None, names: Sequence[str] = TERMINALS, *, target="logit",
                      batch_size: int = 8, chunk: int = 16) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({name: (N, ...) values}, explained classes (N,))`` of a preprocessed batch at ``layer``: ``A``, ``G``,
    ``G2``, ``G3`` (N, h, w, K), ``S`` and ``D`` (N, K), for ``target`` (a :mod:`jaxcam.targets` name or function)
    of ``classes`` (None: the predictions). ``chunk`` images per compiled call (the last one padded)."""
    names = tuple(n for n in TERMINALS if n in set(names) | {"A"})
    site = model.layer_site(layer)
    x = model.check_input(x)
    n = x.shape[0]
    classes = targets_mod.class_indices(classes, n, model.num_classes)
    program = _terminal_program(model.tapped, site, names, targets_mod.resolve(target), int(batch_size))
    parts, cls = [], []
    for start in range(0, n, chunk):
        xs = x[start:start + chunk]
        cs = None if classes is None else classes[start:start + chunk]
        m = xs.shape[0]
        if m < chunk and n > chunk:
            xs = jnp.concatenate([xs, jnp.broadcast_to(xs[:1], (chunk - m, *xs.shape[1:]))])
            cs = None if cs is None else jnp.concatenate([cs, jnp.broadcast_to(cs[:1], (chunk - m,))])
        values, c = program(model.params, xs, cs)
        parts.append({k: np.asarray(v)[:m] for k, v in values.items()})
        cls.append(np.asarray(c)[:m])
    return {k: np.concatenate([p[k] for p in parts]) for k in names}, np.concatenate(cls)


# ---------------------------------------------------------------------------------------------------- scorer

class Scorer:
    """Scores candidate weights ``(B, N, K)`` on N search images: maps in one vmapped program, then the metric on
    all B x N maps at once; returns the (B,) mean over images (NaN images ignored)."""

    def __init__(self, model, x, classes, acts, metric: str, *, masks=None, metric_options=None, key=0,
                 batch_size: int | None = None):
        if metric not in METRICS:
            raise UnknownNameError(metric, METRICS, "metric")
        spec = METRICS[metric]
        if spec.needs == "method":
            raise InvalidArgumentError(f"SyCAM cannot search on {metric!r}: it re-explains perturbed images with "
                                       "the method, and a candidate is not a method until it is found; pick a "
                                       "metric that needs maps, masks or the model")
        if spec.needs == "masks":
            if masks is None:
                raise InvalidArgumentError(f"the localisation metric {metric!r} needs masks= (N, H, W)")
            masks = np.asarray(masks)
            if masks.shape != tuple(x.shape[:3]):
                raise InvalidArgumentError(f"masks must be (N, H, W) = {tuple(x.shape[:3])} for these images, got "
                                           f"{masks.shape}")
        self.model, self.x, self.classes, self.masks = model, x, jnp.asarray(classes), masks
        self.acts = jnp.asarray(acts)
        self.metric, self.spec = metric, spec
        self.options = dict(metric_options or {})
        self.key, self.batch_size = as_key(key), batch_size
        size = tuple(x.shape[1:3])
        self._maps = jax.jit(jax.vmap(jax.vmap(
            lambda a, w: postprocess([jnp.einsum("hwk,k->hw", a, w)], size), in_axes=(0, 0)), in_axes=(None, 0)))

    def maps(self, w) -> jax.Array:
        """(B, N, H, W) maps of weights (B, N, K)."""
        return self._maps(self.acts, jnp.asarray(w, jnp.float32))

    def __call__(self, w) -> np.ndarray:
        maps = self.maps(w)
        b, n = maps.shape[:2]
        flat = maps.reshape(b * n, *maps.shape[2:])
        tile = lambda v: None if v is None else jnp.tile(jnp.asarray(v), (b,) + (1,) * (np.ndim(v) - 1))  # noqa: E731
        ctx = _Context(self.model, tile(self.x), tile(self.classes), tile(self.masks), None, self.key,
                       self.batch_size, {})
        values = _group_fn(self.spec.group)(ctx, flat, "sycam", {self.metric}, dict(self.options))[self.metric]
        v = np.asarray(values, np.float64).reshape(b, n)
        with np.errstate(all="ignore"):
            return np.where(np.isnan(v).all(axis=1), np.nan, np.nanmean(np.where(np.isnan(v), np.nan, v), axis=1))


# ---------------------------------------------------------------------------------------------------- search

@dataclass
class _Entry:
    expr: Expr
    kind: str
    value: object
    const_only: bool


def _signature(v, probe: int) -> bytes:
    a = np.asarray(v, np.float64)[:probe]
    s = float(np.max(np.abs(a))) if a.size else 0.0
    if s == 0.0:
        return b"zero" + str(a.shape).encode()
    q = np.round(a / s, 6) + 0.0  # + 0.0: -0.0 and 0.0 hash alike
    return hashlib.blake2b(q.tobytes() + f"{s:.5e}{a.shape}".encode(), digest_size=16).digest()


def _direction(w, probe: int) -> bytes:
    """Signature of weights up to a positive factor per image (the maps they draw are the same)."""
    a = np.asarray(w, np.float64)[:probe]
    s = np.max(np.abs(a), axis=-1, keepdims=True)
    q = np.round(np.where(s > 0, a / np.where(s > 0, s, 1.0), 0.0), 5) + 0.0
    return hashlib.blake2b(q.tobytes(), digest_size=16).digest()


class _Search:
    def __init__(self, values: Mapping[str, np.ndarray], grammar: Grammar, scorer, *, higher: bool, probe: int,
                 score_batch: int, max_spatial: int, max_per_size: int, progress: bool):
        self.values = {k: jnp.asarray(v) for k, v in values.items()}
        self.n, self.k = self.values["A"].shape[0], self.values["A"].shape[-1]
        self.grammar, self.scorer, self.higher = grammar, scorer, higher
        self.probe, self.score_batch = probe, score_batch
        self.max_spatial, self.max_per_size, self.progress = max_spatial, max_per_size, progress
        self.levels: dict[int, list[_Entry]] = {}
        self.seen: set[bytes] = set()
        self.directions: set[bytes] = set()
        self.pending: list[tuple[Expr, object]] = []
        self.scores: dict[Expr, float] = {}
        self.entries: dict[Expr, _Entry] = {}
        self.enumerated = self.pruned = self.spatial = 0
        self.scoring_seconds = self.compile_seconds = 0.0
        self.compiled = False

    # -- building
    def add(self, e: Expr, value, const_only: bool, level: int) -> _Entry | None:
        self.enumerated += 1
        kind = type_of(e)
        if not const_only:
            if not bool(jnp.all(jnp.isfinite(value))):
                self.pruned += 1
                return None
            sig = kind.encode() + _signature(value, self.probe)
            if sig in self.seen:
                self.pruned += 1
                return None
            self.seen.add(sig)
        entry = _Entry(e, kind, value, const_only)
        self.levels.setdefault(level, []).append(entry)
        self.entries[e] = entry
        if kind == SPATIAL:
            self.spatial += 1
        else:
            w = jnp.broadcast_to(jnp.asarray(value, jnp.float32), (self.n, self.k))
            d = _direction(w, self.probe)
            if d not in self.directions:
                self.directions.add(d)
                self.pending.append((e, w))
                if len(self.pending) >= self.score_batch:
                    self.flush()
        return entry

    def full(self, level: int, kind: str) -> bool:
        return len(self.levels.get(level, [])) >= self.max_per_size or (kind == SPATIAL
                                                                         and self.spatial >= self.max_spatial)

    def unary(self, op: str, a: _Entry, level: int):
        if a.const_only or (op in REDUCTIONS) != (a.kind == SPATIAL) or (op == "softmax" and a.kind != CHANNEL):
            return
        kind = CHANNEL if op in REDUCTIONS else a.kind
        if self.full(level, kind):
            return
        self.add(Expr(op, (a.expr,)), apply_unary(op, a.value, a.kind), False, level)

    def binary(self, op: str, a: _Entry, b: _Entry, level: int):
        if a.const_only and b.const_only:
            return
        kind = SPATIAL if SPATIAL in (a.kind, b.kind) else CHANNEL
        if self.full(level, kind):
            return
        self.add(Expr(op, (a.expr, b.expr)), apply_binary(op, a.value, a.kind, b.value, b.kind), False, level)

    def enumerate(self, max_size: int):
        g = self.grammar
        for t in g.terminals:
            self.add(Expr(t), self.values[t], False, 1)
        for c in g.constants:
            self.add(const(c), float(c), True, 1)
        for size in range(2, max_size + 1):
            for op in g.unary:
                for a in list(self.levels.get(size - 1, [])):
                    self.unary(op, a, size)
            for i in range(1, size - 1):
                j = size - 1 - i
                for op in g.binary:
                    if op in COMMUTATIVE and i > j:
                        continue
                    left, right = list(self.levels.get(i, [])), list(self.levels.get(j, []))
                    for ia, a in enumerate(left):
                        for ib, b in enumerate(right):
                            if op in COMMUTATIVE and i == j and ib < ia:
                                continue
                            self.binary(op, a, b, size)
            if self.progress:
                print(f"sycam: size {size}: {len(self.levels.get(size, []))} kept, {self.enumerated} built, "
                      f"{len(self.scores)} scored", flush=True)
        self.flush()

    # -- scoring
    def flush(self):
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        w = jnp.stack([v for _, v in batch])
        if w.shape[0] < self.score_batch:  # pad: one compiled shape for every batch
            w = jnp.concatenate([w, jnp.broadcast_to(w[:1], (self.score_batch - w.shape[0], *w.shape[1:]))])
        if not self.compiled:
            t0 = time.perf_counter()
            self.scorer(w)
            self.compile_seconds = time.perf_counter() - t0
            self.compiled = True
        t0 = time.perf_counter()
        s = self.scorer(w)
        self.scoring_seconds += time.perf_counter() - t0
        for (e, _), v in zip(batch, s):
            self.scores[e] = float(v)

    def ranked(self) -> list[tuple[Expr, float]]:
        sign = 1.0 if self.higher else -1.0
        items = [(e, s) for e, s in self.scores.items() if np.isfinite(s)]
        return sorted(items, key=lambda es: (-sign * es[1], es[0].size, str(es[0])))

    def grow(self, beam: int, rounds: int) -> list[dict]:
        g = self.grammar
        stages = []
        channel_unary = [op for op in g.unary if op not in REDUCTIONS]
        for r in range(rounds):
            parents = [self.entries[e] for e, _ in self.ranked()[:beam]]
            atoms = [en for lvl in (1, 2) for en in self.levels.get(lvl, []) if en.kind == CHANNEL]
            level = 1000 + r  # grown expressions live in their own level (not reused by the enumeration)
            before = len(self.scores)
            for p in parents:
                for op in channel_unary:
                    self.unary(op, p, level)
                for op in g.binary:
                    for q in atoms + parents:
                        if q.expr == p.expr:
                            continue
                        self.binary(op, p, q, level)
                        if op not in COMMUTATIVE:
                            self.binary(op, q, p, level)
            self.flush()
            best = self.ranked()[0]
            stages.append({"stage": f"beam round {r + 1}", "new_scored": len(self.scores) - before,
                           "best": str(best[0]), "best_score": best[1]})
            if self.progress:
                print(f"sycam: beam round {r + 1}: {stages[-1]['new_scored']} new, best {best[0]} = {best[1]:.4f}",
                      flush=True)
        return stages

    def known(self) -> dict[str, float]:
        out = {}
        for name, formula in KNOWN.items():
            e = parse(formula)
            if not all(t in self.values for t in e.terminals):
                continue
            w = jnp.broadcast_to(jnp.asarray(evaluate_expr(e, self.values), jnp.float32), (self.n, self.k))
            w = jnp.where(jnp.isfinite(w), w, 0.0)
            batch = jnp.broadcast_to(w, (self.score_batch, self.n, self.k))
            out[name] = float(self.scorer(batch)[0])
        return out


def _positive_int(name, v, low=1):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
        raise InvalidArgumentError(f"synthesize: {name} must be an int >= {low}, got {v!r}")
    return int(v)


def synthesize(model, images, *, metric: str = "energy_pointing_game", masks=None, labels=None, layer=None,
               grammar: Grammar | None = None, max_size: int = 4, beam: int = 16, rounds: int = 2,
               score_batch: int = 64, probe: int = 8, max_spatial: int = 400, max_per_size: int = 20000,
               metric_options: Mapping | None = None, target="logit", preprocessed: bool = False, key=0,
               batch_size: int = 8, max_images_per_call: int = 1024, progress: bool = False) -> SearchResult:
    """Search for the channel-weight expression that scores best on ``metric`` over ``images``.

    Args:
      model: a :class:`jaxcam.Model`; ``layer`` the layer explained (default: the model's).
      images: the search images (anything :func:`jaxcam.preprocess` accepts, or a model-input batch with
        ``preprocessed=True``); keep held-out images apart and score the winner there with :func:`held_out`.
      metric: a :data:`jaxcam.METRICS` name whose needs are maps, masks (pass ``masks`` (N, H, W)) or the model.
      labels: the classes explained (None: the predictions).
      grammar: terminals, constants and operators (:class:`Grammar`; default: all of them). Dropping S and D
        saves K forwards and K head passes per image.
      max_size: the largest expression (in nodes) enumerated exhaustively; ``beam`` and ``rounds`` then grow the
        best candidates beyond it.
      score_batch: candidates per scoring call; for a metric that runs the model, at most
        ``max_images_per_call // N`` (the N images are tiled once per candidate). ``probe``: images the
        equivalence test compares on.
      max_spatial, max_per_size: caps on the spatial terms kept (each holds N x h x w x K floats) and on the
        expressions kept per size, so memory and time stay bounded.
      key: the key of the metric's random choices (ROAD's noise); the search itself draws nothing.

    Returns: :class:`SearchResult`.
    """
    grammar = Grammar() if grammar is None else grammar
    if not isinstance(grammar, Grammar):
        raise InvalidArgumentError(f"synthesize: grammar must be a jaxcam.sycam.Grammar, got {type(grammar).__name__}")
    max_size = _positive_int("max_size", max_size)
    beam, score_batch, probe = (_positive_int(n, v) for n, v in (("beam", beam), ("score_batch", score_batch),
                                                                    ("probe", probe)))
    rounds = _positive_int("rounds", rounds, 0)
    if metric not in METRICS:
        raise UnknownNameError(metric, METRICS, "metric")
    x = model.check_input(images if preprocessed else model.preprocess(images))
    t0 = time.perf_counter()
    values, classes = compute_terminals(model, x, labels, layer, grammar.terminals, target=target,
                                        batch_size=batch_size)
    terminal_seconds = time.perf_counter() - t0
    spec = METRICS[metric]
    if spec.needs == "model":  # the images are tiled once per candidate: keep a scoring call to ~1024 forwards
        score_batch = max(1, min(score_batch, max_images_per_call // x.shape[0]))
    scorer = Scorer(model, x, classes, values["A"], metric, masks=masks, metric_options=metric_options, key=key,
                    batch_size=None)
    search = _Search({k: v for k, v in values.items() if k in grammar.terminals or k == "A"}, grammar, scorer,
                     higher=spec.higher_is_better, probe=probe, score_batch=score_batch, max_spatial=max_spatial,
                     max_per_size=max_per_size, progress=progress)
    t0 = time.perf_counter()
    search.enumerate(max_size)
    if not search.scores or not search.ranked():
        raise InvalidArgumentError(f"synthesize: no candidate scored a finite {metric} (grammar {grammar}); widen "
                                   "the grammar or check the images")
    stages = [{"stage": f"enumeration to size {max_size}", "new_scored": len(search.scores),
               "best": str(search.ranked()[0][0]), "best_score": search.ranked()[0][1]}]
    stages += search.grow(beam, rounds)
    enumeration_seconds = time.perf_counter() - t0 - search.scoring_seconds - search.compile_seconds
    ranked = search.ranked()
    return SearchResult(best=ranked[0][0], best_score=ranked[0][1], metric=metric,
                        higher_is_better=spec.higher_is_better, top=ranked[:20],
                        known=search.known(),
                        enumerated=search.enumerated, pruned=search.pruned, scored=len(search.scores),
                        terminal_seconds=terminal_seconds, enumeration_seconds=enumeration_seconds,
                        scoring_seconds=search.scoring_seconds, compile_seconds=search.compile_seconds,
                        by_stage=stages)


def held_out(model, images, expression, *, metric: str = "energy_pointing_game", masks=None, labels=None,
             layer=None, methods: Sequence[str] = ("gradcam", "gradcam++", "scorecam"), preprocessed: bool = False,
             metric_options: Mapping | None = None, key=0, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Per-image ``metric`` of the ``sycam`` method running ``expression`` and of ``methods`` on ``images`` (one
    :func:`jaxcam.evaluate` call): ``{"sycam": (N,), "gradcam": (N,), ...}``."""
    names = ["sycam", *[m for m in methods if m != "sycam"]]
    metric_options = {METRICS[metric].group: dict(metric_options)} if metric_options else None
    table = evaluate(model, images, names, [metric], labels, layer=layer, masks=masks, preprocessed=preprocessed,
                     key=key, batch_size=batch_size, metric_options=metric_options,
                     method_options={"sycam": {"expression": expression}})
    out: dict[str, list] = {m: [] for m in names}
    for r in table.rows():
        out[r["method"]].append(r["value"])
    return {m: np.asarray(v, np.float64) for m, v in out.items()}


def search_terminals(grammar: Grammar | None = None) -> tuple[str, ...]:
    """The terminals a search over ``grammar`` computes (A always: the maps are drawn from it)."""
    g = Grammar() if grammar is None else grammar
    return tuple(t for t in TERMINALS if t in g.terminals or t == "A")
