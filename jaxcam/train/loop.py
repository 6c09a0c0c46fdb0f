"""``fit``: train any model jaxcam explains, through the tapped forward it is explained with.

One jitted step ``(state, batch, key) -> (state, metrics)`` does everything that touches the parameters::

    batch  = augment(fold_in(key, 0), batch)                 pure functions of (key, batch), pipeline.py
    x      = (batch.image - mean) / std                       the model's own normalisation
    g      = (1/k) sum_j grad_theta L(theta, micro_j, fold_in(key_loss, j))   k = accumulate micro-batches (scan)
    theta <- theta + optax_update(g)                          frozen leaves: set_to_zero, left bit-identical

so an update on ``k`` micro-batches of ``B`` equals one update on a batch of ``k * B`` (the loss is a mean), while
only one micro-batch's activations are alive at a time. The model runs in evaluation mode (BatchNorm at its
running statistics, no dropout), because that is the function jaxcam explains: a model trained here is explained
exactly as it was trained, and a CAM-aware loss sees the maps :func:`jaxcam.explain` returns.

Determinism: every random choice derives from ``key`` and the step number (``fold_in(fold_in(key, 1), step)`` for
the step, ``fold_in(key, 0)`` for the data order, see :mod:`jaxcam.train.pipeline`), so the same key gives the
same bits and a run resumed from a checkpoint continues bit for bit (tests/test_train_resume.py kills a run with
SIGKILL and compares).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import CheckpointError, InvalidArgumentError, JaxcamError, UnknownNameError
from ..keys import as_key
from ..table import Table, csv_cell
from . import pipeline
from .checkpoint import Checkpoints, differences, fingerprint, pack, param_entries, unpack
from .losses import LOSSES, LossContext
from .optim import check_optimizer, make_optimizer, make_schedule, masked

LOG_EVERY = 10
BASE_COLUMNS = ("step", "loss", "accuracy", "learning_rate", "seconds_per_step")


class NonFiniteLossError(JaxcamError, FloatingPointError):
    """The training loss (or the parameters) became NaN or infinite; the message names the step and the last good
    checkpoint, which is kept."""


class TrainState(NamedTuple):
    """What one step changes: the parameters, the optax state and the number of updates done (the data position:
    step ``s`` reads the batch at position ``s`` of the stream)."""

    params: Any
    opt_state: Any
    step: jax.Array


@dataclass(frozen=True)
class TrainResult:
    """``model``: the input model with the trained parameters; ``history``: one row per step (columns step, loss,
    accuracy, learning_rate, seconds_per_step, the loss's other aux scalars, eval_accuracy with eval_data);
    ``step``: updates done; ``checkpoint_dir``: where the checkpoints are (None without one)."""

    model: Any
    history: Table
    step: int
    checkpoint_dir: str | None


# ---------------------------------------------------------------------------------------------------- checks


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise InvalidArgumentError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _resolve_loss(loss, loss_options) -> tuple[Callable, dict, str]:
    if not isinstance(loss_options, (Mapping, type(None))):
        raise InvalidArgumentError(f"loss_options must be a dict of the loss's options, got "
                                   f"{type(loss_options).__name__}")
    options = dict(loss_options or {})
    if isinstance(loss, str):
        spec = LOSSES.get(loss)
        if spec is None:
            raise UnknownNameError(loss, LOSSES, "loss (or pass a function (params, batch, key, ctx, **options) -> "
                                                 "(loss, aux))")
        for name in options:
            if name not in spec.options:
                raise UnknownNameError(name, spec.options, f"loss_options of loss {loss!r}")
        return spec.fn, options, loss
    if callable(loss):
        return loss, options, f"{getattr(loss, '__module__', '?')}.{getattr(loss, '__qualname__', repr(loss))}"
    raise InvalidArgumentError(f"loss must be a name in LOSSES ({', '.join(LOSSES)}) or a function, got {loss!r}")


def _names(path) -> tuple:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
        else:
            out.append(str(k))
    return tuple(out)


def trainable_mask(params, trainable=None) -> list[bool]:
    """One bool per array leaf of ``params`` (``jax.tree.leaves`` order): which leaves train.

    ``trainable=None``: the floating leaves of the ``"params"`` collection of linen variables, the ``nnx.Param``
    leaves of an NNX state (BatchNorm statistics stay as they are), every floating leaf of any other tree. A
    callable ``(path, leaf) -> bool`` chooses instead (``path``: the tuple of keys, e.g. ``("params", "head",
    "kernel")``); integer leaves never train."""
    from flax import nnx

    def is_var(x):
        return isinstance(x, nnx.Variable)

    linen = isinstance(params, Mapping) and "params" in params
    mask = []
    for path, node in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_var)[0]:
        for sub, leaf in jax.tree_util.tree_flatten_with_path(node)[0]:
            names = _names(path) + (() if is_var(node) else _names(sub))
            floating = jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
            if trainable is None:
                keep = floating and ((not linen or names[:1] == ("params",))
                                     and (not is_var(node) or isinstance(node, nnx.Param)))
            else:
                keep = bool(trainable(names, leaf))
                if keep and not floating:
                    raise InvalidArgumentError(f"trainable selected {names} of dtype {jnp.result_type(leaf)}; only "
                                               "floating-point leaves can train: return False for it")
            mask.append(bool(keep))
    if not any(mask):
        raise InvalidArgumentError("trainable selects no parameter of the model: nothing would train; return True for "
                                   "the leaves to train (trainable=None trains every parameter)")
    return mask


# ---------------------------------------------------------------------------------------------------- the step


def make_step(ctx: LossContext, loss_fn: Callable, options: dict, augment: tuple, mask: list[bool], treedef,
              tx, schedule, accumulate: int, mean, std) -> Callable:
    """The training step ``(state, batch, key) -> (state, metrics)`` (module docstring), not yet jitted."""
    mean = jnp.asarray(mean, jnp.float32).reshape(1, 1, 1, 3)
    std = jnp.asarray(std, jnp.float32).reshape(1, 1, 1, 3)

    def objective(train, frozen, micro, key):
        leaves = [t if m else f for t, f, m in zip(train, frozen, mask)]
        loss, aux = loss_fn(jax.tree.unflatten(treedef, leaves), micro, key, ctx, **options)
        return loss, {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(state: TrainState, batch: dict, key: jax.Array):
        batch = pipeline.apply_augment(augment, jax.random.fold_in(key, 0), batch)
        batch = dict(batch, image=(batch["image"] - mean) / std)
        k_loss = jax.random.fold_in(key, 1)
        leaves = jax.tree.leaves(state.params)
        train = [leaf if m else None for leaf, m in zip(leaves, mask)]
        frozen = [None if m else leaf for leaf, m in zip(leaves, mask)]
        if accumulate == 1:
            (loss, aux), grads = grad_fn(train, frozen, batch, k_loss)
        else:
            micro = jax.tree.map(lambda a: a.reshape((accumulate, a.shape[0] // accumulate) + a.shape[1:]), batch)

            def body(total, xs):
                mb, j = xs
                out = grad_fn(train, frozen, mb, jax.random.fold_in(k_loss, j))
                return jax.tree.map(jnp.add, total, out), None

            first = jax.tree.map(lambda a: a[0], micro)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                jax.eval_shape(grad_fn, train, frozen, first, k_loss))
            # XLA's CPU backend runs convolutions inside a while loop ~25x slower than unrolled (measured on the
            # reference CNN: 0.57 s vs 0.024 s for 2 x 8 images), so the CPU unrolls; accelerators keep the loop,
            # which holds one micro-batch's activations at a time
            unroll = accumulate if jax.default_backend() == "cpu" else 1
            total, _ = jax.lax.scan(body, zero, (micro, jnp.arange(accumulate, dtype=jnp.uint32)), unroll=unroll)
            (loss, aux), grads = jax.tree.map(lambda t: t / accumulate, total)
        grads = [g if m else jnp.zeros_like(leaf) for g, leaf, m in zip(grads, leaves, mask)]
        updates, opt_state = tx.update(jax.tree.unflatten(treedef, grads), state.opt_state, state.params)
        new = [(p + u).astype(p.dtype) if m else p for p, u, m in zip(leaves, jax.tree.leaves(updates), mask)]
        rate = jnp.float32(jnp.nan) if schedule is None else jnp.asarray(schedule(state.step), jnp.float32)
        metrics = {"loss": jnp.asarray(loss, jnp.float32), **aux, "learning_rate": rate}
        return TrainState(jax.tree.unflatten(treedef, new), opt_state, state.step + 1), metrics

    return step


@lru_cache(maxsize=8)
def _program(ctx, loss_fn, options, augment, mask, treedef, optimizer, learning_rate, schedule, steps, warmup_steps,
             weight_decay, accumulate, mean, std):
    """The optax transformation and the jitted step of a configuration, cached: runs with the same settings (a
    resumed run, the same model trained again) share one compiled program."""
    rate = None if not isinstance(optimizer, str) else make_schedule(schedule, learning_rate, steps, warmup_steps)
    labels = jax.tree.unflatten(treedef, ["train" if m else "frozen" for m in mask])
    tx = masked(make_optimizer(optimizer, rate, weight_decay), labels)
    step = make_step(ctx, loss_fn, dict(options), augment, list(mask), treedef, tx, rate, accumulate, mean, std)
    donate = (0,) if jax.default_backend() != "cpu" else ()  # CPU cannot donate (XLA warns)
    return tx, jax.jit(step, donate_argnums=donate)


@jax.jit
def _all_finite(params) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# ---------------------------------------------------------------------------------------------------- evaluation


@partial(jax.jit, static_argnums=0)
def _correct(forward, params, images, labels, valid, mean, std):
    logits = forward(params, (images - mean) / std)
    return jnp.sum((jnp.argmax(logits, axis=-1) == labels) & valid)


def _accuracy(model, params, arrays: dict, batch_size: int) -> float:
    images, labels = arrays["image"], arrays["label"]
    n = len(labels)
    mean = jnp.asarray(model.mean, jnp.float32).reshape(1, 1, 1, 3)
    std = jnp.asarray(model.std, jnp.float32).reshape(1, 1, 1, 3)
    correct = 0
    for i in range(0, n, batch_size):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        pad = batch_size - len(y) if n > batch_size else 0  # one program shape for every batch
        valid = np.arange(len(y) + pad) < len(y)
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
        y = np.concatenate([y, np.zeros(pad, y.dtype)]) if pad else y
        correct += int(_correct(model.tapped.plain, params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(valid),
                                mean, std))
    return correct / n


def evaluate_accuracy(model, data, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (a dict of arrays with ``image`` in [0, 1] and ``label``, an
    ImageSource or a spec string), in evaluation mode, images resized to the model's input size and normalised."""
    batch_size = _positive_int("batch_size", batch_size)
    arrays = pipeline.load_data(data, model.input_size, model.num_classes)
    return _accuracy(model, model.params, arrays, batch_size)


# ---------------------------------------------------------------------------------------------------- history


class _History:
    """The rows of the run, appended to a CSV as it goes (flushed every LOG_EVERY steps and before each
    checkpoint); a resumed run keeps the file's rows up to its checkpoint and continues it."""

    def __init__(self, path, columns: list[str], start: int, keep: bool = False):
        """``keep``: only read the file's rows (a finished run; its columns are the file's)."""
        self.path, self.columns, self.rows, self.pending = path, columns, [], []
        if path is None:
            return
        self.path = os.fspath(path)
        if os.path.dirname(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if start > 0 and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.rows = [_parse(r) for r in reader if _step_of(r) is not None and _step_of(r) <= start]
                self.columns = self.columns or list(reader.fieldnames or [])
        if keep:
            self.path = None
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            self._write(f, self.rows, header=True)
        os.replace(tmp, self.path)

    def _write(self, f, rows, header=False):
        w = csv.writer(f, lineterminator="\n")
        if header:
            w.writerow([csv_cell(c) for c in self.columns])
        w.writerows([csv_cell(r.get(c, "")) for c in self.columns] for r in rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.pending.append(row)

    def flush(self) -> None:
        if self.path is not None and self.pending:
            with open(self.path, "a", newline="") as f:
                self._write(f, self.pending)
        self.pending = []

    def table(self) -> Table:
        return Table.from_rows([{c: r.get(c, math.nan) for c in self.columns} for r in self.rows], self.columns)


def _step_of(row: dict):
    try:
        return int(row.get("step", ""))
    except ValueError:
        return None


def _parse(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if k == "step":
            out[k] = int(v)
        else:
            try:
                out[k] = float(v) if v != "" else math.nan
            except ValueError:
                out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------- fit


def fit(model, data, *, steps: int, batch_size: int = 32, loss="cross_entropy", loss_options=None, layer=None,
        optimizer="adam", learning_rate: float = 1e-3, schedule: str = "constant", warmup_steps: int = 0,
        weight_decay: float = 0.0, accumulate: int = 1, augment=("flip",), key=0, trainable=None,
        checkpoint_dir=None, checkpoint_every: int = 100, resume: bool = True, progress: bool = True, history=None,
        eval_data=None, eval_every: int = 0) -> TrainResult:
    """Train ``model.params`` for ``steps`` updates and return the model with the trained parameters.

    Args:
      model: any :class:`jaxcam.Model` (built-in, :func:`jaxcam.from_linen`, ...); trained through
        ``model.tapped.apply`` in evaluation mode (BatchNorm frozen at its running statistics, no dropout).
      data: a dict of arrays (``image`` (N, S, S, 3) in [0, 1], ``label`` (N,), optional per-item extras such as
        ``mask``), an ImageSource, or a spec (``"synthetic:512"``, ``"tfds:NAME[:SPLIT]"``, ``"folder:PATH"``);
        held in memory at the model's input size (:mod:`jaxcam.train.pipeline`).
      steps: optimiser updates; each reads ``batch_size * accumulate`` items.
      loss, loss_options: a name in ``jaxcam.train.LOSSES`` with its options, or a function ``(params, batch, key,
        ctx, **options) -> (loss, aux)``; ``aux`` scalars become history columns.
      layer: the CAM layer CAM-aware losses use (default: the model's default layer).
      optimizer, learning_rate, schedule, warmup_steps, weight_decay: :mod:`jaxcam.train.optim`; or an optax
        GradientTransformation used as it is.
      accumulate: micro-batches of ``batch_size`` whose mean gradient makes one update.
      augment: names in :data:`jaxcam.train.pipeline.AUGMENTATIONS` or functions ``(key, batch) -> batch``.
      key: an int seed or a jax.random key; the same key gives the same bits.
      trainable: None (every parameter) or ``(path, leaf) -> bool`` (:func:`trainable_mask`); frozen leaves are
        returned bit-identical.
      checkpoint_dir, checkpoint_every, resume: orbax checkpoints every ``checkpoint_every`` steps and at the end,
        the last 3 kept; with ``resume=True`` a run continues from the newest one (same settings required),
        with ``resume=False`` the folder's checkpoints are deleted and the run starts afresh.
      progress: a tqdm bar. history: a CSV path the rows are appended to as the run goes.
      eval_data, eval_every: data to measure ``eval_accuracy`` on every ``eval_every`` steps (0: at the end).

    Raises (one line, before any work): UnknownNameError (optimizer, schedule, loss, loss option, augmentation,
    dataset scheme), UnknownLayerError, InvalidArgumentError (steps, batch_size, accumulate, ... not positive
    ints), CheckpointError (a checkpoint of another model, or of other settings, in ``checkpoint_dir``); during
    training NonFiniteLossError naming the step (the last good checkpoint is kept).
    """
    steps = _positive_int("steps", steps)
    batch_size = _positive_int("batch_size", batch_size)
    accumulate = _positive_int("accumulate", accumulate)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
    eval_every = _positive_int("eval_every", eval_every, minimum=0)
    if eval_every and eval_data is None:
        raise InvalidArgumentError(f"eval_every={eval_every} needs eval_data (the data to measure accuracy on)")
    if not isinstance(resume, bool):
        raise InvalidArgumentError(f"resume must be True or False, got {resume!r}")
    if history is not None and not isinstance(history, (str, os.PathLike)):
        raise InvalidArgumentError(f"history must be a CSV file path or None, got {type(history).__name__}")
    run_key = as_key(key)
    loss_fn, options, loss_name = _resolve_loss(loss, loss_options)
    site = model.layer_site(layer)
    check_optimizer(optimizer, schedule, learning_rate, warmup_steps, weight_decay, steps)
    augment_fns = pipeline.check_augment(augment)
    data = pipeline.check_data(data)
    eval_data = None if eval_data is None else pipeline.check_data(eval_data, "eval_data")
    if trainable is not None and not callable(trainable):
        raise InvalidArgumentError(f"trainable must be None or a function (path, leaf) -> bool, got {trainable!r}")
    mask = trainable_mask(model.params, trainable)
    treedef = jax.tree.structure(model.params)

    custom = not isinstance(optimizer, str)
    ctx = LossContext(model.tapped.apply, site, model.num_classes, tuple(model.tapped.sites))
    program = (ctx, loss_fn, tuple(sorted(options.items())), augment_fns, tuple(mask), treedef, optimizer,
               learning_rate, schedule, steps, warmup_steps, weight_decay, accumulate, tuple(model.mean),
               tuple(model.std))
    try:
        tx, step_jit = _program(*program)
    except TypeError:  # an unhashable loss option: build this run's program alone
        tx, step_jit = _program.__wrapped__(*program)

    entries = param_entries(model.params)
    settings = json.loads(json.dumps({
        "steps": steps, "batch_size": batch_size, "accumulate": accumulate, "loss": loss_name,
        "loss_options": options, "layer": site, "optimizer": "optax.GradientTransformation" if custom else optimizer,
        "learning_rate": learning_rate, "schedule": schedule, "warmup_steps": warmup_steps,
        "weight_decay": weight_decay, "augment": [getattr(f, "__qualname__", repr(f)) for f in augment_fns],
        "key": np.asarray(jax.random.key_data(run_key)).tolist(), "data": pipeline.describe(data),
        "trainable": f"{sum(mask)} of {len(mask)} arrays, "
                     f"{hashlib.sha256(bytes(mask)).hexdigest()[:12]}",
    }, default=repr))
    record = {"settings": settings, "model": model.name, "fingerprint": fingerprint(entries), "parameters": entries}

    store, start = None, 0
    if checkpoint_dir is not None:
        store = Checkpoints(checkpoint_dir)
        latest = store.latest()
        if latest is not None and not resume:
            store.clear()
        elif latest is not None:
            _check_resume(store, latest, record, steps, schedule)
            start = latest
    try:
        return _run(model, data, eval_data, eval_every, steps, batch_size, accumulate, run_key, tx, step_jit,
                    store, start, checkpoint_every, record, history, progress)
    finally:
        if store is not None:
            store.close()


def _check_resume(store: Checkpoints, latest: int, record: dict, steps: int, schedule: str) -> None:
    saved = store.settings(latest)
    where = f"checkpoint_dir {store.directory!r} (step {latest})"
    fresh = "to start fresh pass resume=False (its checkpoints are deleted) or another checkpoint_dir"
    if saved.get("fingerprint") != record["fingerprint"]:
        old, new = saved.get("parameters") or [], record["parameters"]
        first = next((f"{a!r} there, {b!r} here" for a, b in zip(old, new) if a != b),
                     f"{len(old)} arrays there, {len(new)} here")
        raise CheckpointError(
            f"{where} holds model {saved.get('model')!r} (parameter tree {saved.get('fingerprint')}), not this model "
            f"{record['model']!r} (parameter tree {record['fingerprint']}): first difference {first}; {fresh}")
    ignore = ("steps",) if schedule == "constant" else ()  # a constant rate does not depend on the length
    diff = differences(saved.get("settings", {}), record["settings"], ignore)
    if diff:
        raise CheckpointError(f"resume=True but {where} was written with other settings: {'; '.join(diff)}; {fresh}")
    if latest > steps:
        raise CheckpointError(f"{where} is already past steps={steps}; ask for steps >= {latest}, or {fresh}")


def _run(model, data, eval_data, eval_every, steps, batch_size, accumulate, run_key, tx, step_jit, store,
         start, checkpoint_every, record, history, progress) -> TrainResult:
    params = jax.tree.map(jnp.array, model.params)  # copies: the step may donate its input buffers
    state = TrainState(params, tx.init(params), jnp.asarray(0, jnp.int32))
    key_data = jax.random.key_data(run_key)
    if start:
        tree = store.restore(start, pack(state.params, state.opt_state, state.step, key_data))
        p, o, s, _ = unpack(tree, state.params, state.opt_state)
        state = TrainState(p, o, jnp.asarray(s, jnp.int32))
    if start == steps:  # finished before: nothing to load or compile
        return TrainResult(model.with_params(state.params), _History(history, [], start, keep=True).table(), start,
                           store.directory)

    arrays = pipeline.load_data(data, model.input_size, model.num_classes)
    eval_arrays = None if eval_data is None else pipeline.load_data(eval_data, model.input_size, model.num_classes,
                                                                    "eval_data")
    per_step = batch_size * accumulate
    stream = pipeline.Stream(len(arrays["label"]), per_step, jax.random.fold_in(run_key, 0))
    step_root = jax.random.fold_in(run_key, 1)
    device_arrays = {k: jnp.asarray(v) for k, v in arrays.items()}

    first = pipeline.gather(device_arrays, jnp.asarray(stream.indices(0)))
    _, shapes = jax.eval_shape(step_jit, state, first, step_root)  # checks the loss's outputs before training
    if "accuracy" not in shapes or any(s.shape != () for s in shapes.values()):
        raise InvalidArgumentError(f"the loss must return (scalar loss, aux) with aux a dict of scalars including "
                                   f"'accuracy'; got aux {{{', '.join(f'{k}: {v.shape}' for k, v in shapes.items())}}}")
    extra = [k for k in shapes if k not in BASE_COLUMNS]
    columns = list(BASE_COLUMNS) + extra + (["eval_accuracy"] if eval_arrays is not None else [])
    log = _History(history, columns, start)

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not progress)
    try:
        for s in range(start, steps):
            t0 = time.perf_counter()
            batch = pipeline.gather(device_arrays, jnp.asarray(stream.indices(s)))
            state, metrics = step_jit(state, batch, jax.random.fold_in(step_root, s))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            done = s + 1
            row = {"step": done, **metrics, "seconds_per_step": time.perf_counter() - t0}
            if eval_arrays is not None and ((eval_every and done % eval_every == 0) or done == steps):
                row["eval_accuracy"] = _accuracy(model, state.params, eval_arrays, batch_size)
            log.add(row)
            if not math.isfinite(row["loss"]):
                log.flush()
                raise NonFiniteLossError(f"the training loss is {row['loss']} at step {done}; "
                                         f"{_last_good(store)}; lower learning_rate or check the data")
            if done % LOG_EVERY == 0:
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", accuracy=f"{row['accuracy']:.3f}", refresh=False)
            if store is not None and (done % checkpoint_every == 0 or done == steps):
                if not bool(_all_finite(state.params)):
                    log.flush()
                    raise NonFiniteLossError(f"the parameters became NaN or infinite in step {done} (loss "
                                             f"{row['loss']}); {_last_good(store)}; lower learning_rate")
                log.flush()  # rows reach the file before their checkpoint exists: a resume never loses rows
                store.save(done, pack(state.params, state.opt_state, state.step, key_data), record)
            bar.update(1)
        log.flush()
    finally:
        bar.close()
    return TrainResult(model.with_params(state.params), log.table(), int(state.step),
                       None if store is None else store.directory)


def _last_good(store) -> str:
    if store is None:
        return "no checkpoint_dir was given, nothing was saved"
    store.wait()
    latest = store.latest()
    return ("no checkpoint was written yet" if latest is None else
            f"the last good checkpoint, step {latest} in {store.directory!r}, is kept (resume=True continues from it)")


__all__ = ["LOG_EVERY", "NonFiniteLossError", "TrainResult", "TrainState", "evaluate_accuracy", "fit", "make_step",
           "trainable_mask"]
