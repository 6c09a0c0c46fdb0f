"""Optimisers and learning-rate schedules by name, and the mask that keeps frozen parameters exactly as they were.

Every schedule maps the update count ``t`` (0-based; one count per optimiser update, so gradient accumulation does
not stretch it) to a learning rate. With ``warmup_steps = w > 0`` the rate first rises linearly from 0 to the
peak over ``w`` updates (optax's convention), then follows the schedule over the remaining ``n = steps - w``:

* ``constant``: ``lr``;
* ``cosine``: ``lr * (1 + cos(pi * t / n)) / 2`` (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts);
* ``warmup_cosine``: ``cosine`` with a warm-up of ``warmup_steps`` or, when that is 0, a tenth of the steps
  (Goyal et al. 2017's gradual warm-up, which large batches need);
* ``step``: ``lr``, times 0.1 from ``n / 2`` and again from ``3 n / 4`` (He et al.'s ResNet recipe, by fraction).

Optimisers: ``sgd`` (plain), ``momentum`` (heavy-ball, 0.9), ``adam`` (Kingma & Ba, ICLR 2015) and ``adamw``
(Loshchilov & Hutter, ICLR 2019). ``weight_decay`` is decoupled for ``adamw`` (``p -= lr * wd * p`` beside the
Adam step) and an L2 term added to the gradient (``g + wd * p``) for the others, which is what decay means for SGD.

Frozen parameters go through ``optax.multi_transform`` with ``optax.set_to_zero()``: they get no update, no
optimiser state (no Adam moments for a frozen backbone) and no weight decay.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from ..errors import InvalidArgumentError, UnknownNameError

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
MOMENTUM = 0.9
STEP_DECAY = 0.1


def check_optimizer(optimizer, schedule: str, learning_rate, warmup_steps: int, weight_decay, steps: int) -> None:
    """Raise before any work for an unknown optimiser or schedule, or a learning rate, warm-up or decay that
    cannot be used (one line naming the argument)."""
    if not isinstance(optimizer, optax.GradientTransformation):
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
            raise UnknownNameError(optimizer, OPTIMIZERS, "optimizer (or pass an optax.GradientTransformation)")
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise UnknownNameError(schedule, SCHEDULES, "schedule")
    if not _real(learning_rate) or not learning_rate > 0:
        raise InvalidArgumentError(f"learning_rate must be a positive finite number, got {learning_rate!r}")
    if not _real(weight_decay) or weight_decay < 0:
        raise InvalidArgumentError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or not 0 <= warmup_steps < steps:
        raise InvalidArgumentError(f"warmup_steps must be an int in [0, steps={steps}), got {warmup_steps!r}")
    if isinstance(optimizer, optax.GradientTransformation) and (
            schedule != "constant" or warmup_steps or weight_decay or learning_rate != 1e-3):
        raise InvalidArgumentError(
            "learning_rate, schedule, warmup_steps and weight_decay configure the named optimizers; with an optax "
            "GradientTransformation set them inside it (optax.adam(optax.cosine_decay_schedule(...)), ...) and leave "
            "these at their defaults")


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def make_schedule(schedule: str, learning_rate: float, steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """The learning rate as a function of the update count (module docstring)."""
    lr = float(learning_rate)
    warmup = warmup_steps or (max(1, steps // 10) if schedule == "warmup_cosine" else 0)
    warmup = min(warmup, steps - 1)
    n = max(1, steps - warmup)
    if schedule == "constant":
        main = optax.constant_schedule(lr)
    elif schedule in ("cosine", "warmup_cosine"):
        main = optax.cosine_decay_schedule(lr, n)
    elif schedule == "step":
        first, second = n // 2, (3 * n) // 4

        def main(count):
            return lr * jnp.where(count >= first, STEP_DECAY, 1.0) * jnp.where(count >= second, STEP_DECAY, 1.0)
    else:
        raise UnknownNameError(schedule, SCHEDULES, "schedule")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(optimizer, schedule: optax.Schedule | None, weight_decay: float) -> optax.GradientTransformation:
    """The optax transformation of a name (module docstring); a GradientTransformation is returned as it is."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=float(weight_decay))
    base = {"sgd": lambda: optax.sgd(schedule), "momentum": lambda: optax.sgd(schedule, momentum=MOMENTUM),
            "adam": lambda: optax.adam(schedule)}[optimizer]()
    return optax.chain(optax.add_decayed_weights(float(weight_decay)), base) if weight_decay else base


def masked(tx: optax.GradientTransformation, labels) -> optax.GradientTransformation:
    """``tx`` on the leaves labelled ``"train"``, ``set_to_zero`` (no state, no update) on those labelled
    ``"frozen"``; ``labels`` is a tree of these strings shaped like the parameters."""
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


__all__ = ["OPTIMIZERS", "SCHEDULES", "check_optimizer", "make_optimizer", "make_schedule", "masked"]
