"""Checkpoints of a training run with orbax: the state (parameters, optimiser state, step, key) and the run's
settings, written every N steps, atomically, keeping the last few.

Layout: ``checkpoint_dir/<step>/state`` (the arrays, tensorstore) and ``checkpoint_dir/<step>/settings`` (JSON:
the settings that decide the bits, the model's name and a fingerprint of its parameter tree). orbax's
``CheckpointManager`` writes each step into a temporary folder and renames it when complete, so a process killed
mid-write (even by SIGKILL) leaves the previous checkpoint intact and a half-written one that is never read (and
is removed when the folder is opened again).

The state is stored as flat numbered leaves (``params/00012``) and restored into the structure of a freshly
initialised state: any pytree (linen dicts, NNX ``State``, optax's named tuples) round-trips without orbax knowing
its types, and the fingerprint (every parameter's path, shape and dtype) guards against restoring into another
model.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from ..errors import CheckpointError, InvalidArgumentError

KEEP = 3
STATE, SETTINGS = "state", "settings"


def param_entries(params) -> list[str]:
    """``"path shape dtype"`` for every array of the parameter tree, in leaf order."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [f"{jax.tree_util.keystr(path)} {tuple(np.shape(leaf))} {getattr(leaf, 'dtype', type(leaf).__name__)}"
            for path, leaf in flat]


def fingerprint(entries: list[str]) -> str:
    """A short digest of :func:`param_entries`: equal for two models exactly when their trees match."""
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def pack(params, opt_state, step, key_data) -> dict:
    """The state as the flat tree orbax writes."""
    def flat(tree):
        return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}

    return {"params": flat(params), "opt_state": flat(opt_state), "step": step, "key": key_data}


def unpack(tree: dict, params_like, opt_state_like):
    """``(params, opt_state, step, key_data)`` from a restored flat tree, in the structure of the ``*_like`` trees."""
    def build(flat, like):
        leaves = [flat[f"{i:05d}"] for i in range(len(flat))]
        return jax.tree.unflatten(jax.tree.structure(like), leaves)

    return build(tree["params"], params_like), build(tree["opt_state"], opt_state_like), tree["step"], tree["key"]


def differences(saved: dict, now: dict, ignore=()) -> list[str]:
    """``"name: checkpoint X, now Y"`` for each setting that differs (keys of either side, minus ``ignore``)."""
    out = []
    for name in sorted(set(saved) | set(now)):
        if name not in ignore and saved.get(name) != now.get(name):
            out.append(f"{name}: checkpoint {saved.get(name)!r}, now {now.get(name)!r}")
    return out


class Checkpoints:
    """The orbax ``CheckpointManager`` of one run's ``checkpoint_dir``."""

    def __init__(self, directory, keep: int = KEEP):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise InvalidArgumentError(f"checkpoint_dir {self.directory!r} is a file; give a folder (created if "
                                       "missing)")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, SETTINGS))

    def latest(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        self.manager.reload()
        return self.manager.latest_step()

    def settings(self, step: int) -> dict:
        """The settings JSON saved with ``step``."""
        ocp = self._ocp
        try:
            return dict(self.manager.restore(step, args=ocp.args.Composite(**{SETTINGS: ocp.args.JsonRestore()}))
                        [SETTINGS])
        except Exception as exc:  # noqa: BLE001 - orbax raises many types for a folder it did not write
            raise CheckpointError(f"checkpoint step {step} in {self.directory!r} has no readable settings "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); it was "
                                  "not written by jaxcam.train: give another checkpoint_dir or resume=False") from None

    def save(self, step: int, state: dict, settings: dict) -> None:
        """Start writing ``step`` (asynchronously; :meth:`wait` or :meth:`close` finishes it)."""
        ocp = self._ocp
        self.manager.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                                           SETTINGS: ocp.args.JsonSave(settings)}), force=True)

    def restore(self, step: int, like: dict) -> dict:
        """The state tree of ``step``, shaped, typed and placed like ``like``."""
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))[STATE]

    def clear(self) -> None:
        """Delete every checkpoint of this folder (a fresh start with ``resume=False``)."""
        for step in self.manager.all_steps():
            self.manager.delete(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


__all__ = ["Checkpoints", "differences", "fingerprint", "pack", "param_entries", "unpack"]
