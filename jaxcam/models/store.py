"""Converted checkpoints on disk: orbax-checkpoint directories under a models directory, with ``manifest.json``.

The models directory is, in order: the ``models_dir`` argument, the ``JAXCAM_MODELS_DIR`` environment variable,
the repository's ``models/`` folder (when jaxcam runs from a source checkout that has one), else
``~/.cache/jaxcam/models``. Each entry of ``manifest.json`` records the architecture, the source and its sha256,
the sha256 and size of every file of the converted checkpoint, the library versions used, and the max |logit
difference| against the source model measured at conversion time. Loading verifies every file first and raises
:class:`~jaxcam.CheckpointError` subclasses on missing, truncated or altered files.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
from flax import nnx

from ..errors import ChecksumMismatchError, CheckpointError, MissingCheckpointFilesError
from .architectures import get_architecture
from .convert import abstract_model
from .model import Model

MANIFEST = "manifest.json"
ENV_VAR = "JAXCAM_MODELS_DIR"
REPO_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def resolve_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    if models_dir is not None:
        return Path(models_dir)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    if (REPO_MODELS_DIR / MANIFEST).is_file():
        return REPO_MODELS_DIR
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxcam" / "models"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(models_dir: str | os.PathLike | None = None) -> dict:
    path = resolve_models_dir(models_dir) / MANIFEST
    if not path.exists():
        return {"format": 1, "models": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest.get("models"), dict):
            raise ValueError("no 'models' table")
    except ValueError as exc:
        raise CheckpointError(f"corrupt model manifest {str(path)!r}: {exc}") from None
    return manifest


def _write_manifest(models_dir: Path, manifest: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=models_dir, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, models_dir / MANIFEST)


def library_versions(*extra: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "orbax-checkpoint", "numpy", *extra):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _file_table(ckpt_dir: Path) -> dict[str, dict]:
    return {p.relative_to(ckpt_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(ckpt_dir.rglob("*")) if p.is_file()}


def _str_tree(tree):
    return {str(k): _str_tree(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def save_model(model: Model, name: str, models_dir: str | os.PathLike | None = None, *, source: str,
               source_sha256: str | None, max_abs_logit_diff: float | None, parity_reference: str,
               versions: dict | None = None) -> dict:
    """Write ``model`` as an orbax checkpoint ``<models_dir>/<name>/`` and record it in the manifest."""
    import orbax.checkpoint as ocp

    root = resolve_models_dir(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tree = _str_tree(nnx.to_pure_dict(model.params))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp.absolute(), jax_tree_to_numpy(tree))
    ckptr.wait_until_finished()
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    entry = {
        "arch": model.arch.name, "num_classes": model.num_classes, "format": "orbax-checkpoint",
        "path": name, "source": source, "source_sha256": source_sha256, "files": _file_table(final),
        "versions": versions or library_versions(), "max_abs_logit_diff": max_abs_logit_diff,
        "parity_reference": parity_reference,
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }
    manifest = read_manifest(root)
    manifest["models"][name] = entry
    _write_manifest(root, manifest)
    return entry


def jax_tree_to_numpy(tree):
    return {k: jax_tree_to_numpy(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree)


def verify_files(name: str, entry: dict, models_dir: Path) -> Path:
    """Check that every file of a checkpoint is present, complete and unaltered."""
    ckpt = models_dir / entry.get("path", name)
    missing = [f for f in entry["files"] if not (ckpt / f).is_file()]
    if missing:
        raise MissingCheckpointFilesError(
            f"checkpoint {name!r} in {str(models_dir)!r} is missing {len(missing)} file(s): {', '.join(missing)}")
    for f, want in entry["files"].items():
        size = (ckpt / f).stat().st_size
        if size != want["bytes"]:
            raise ChecksumMismatchError(f"checkpoint {name!r}: file {f!r} is {size} bytes, expected "
                                        f"{want['bytes']} (truncated or replaced)")
        got = sha256_file(ckpt / f)
        if got != want["sha256"]:
            raise ChecksumMismatchError(f"checkpoint {name!r}: file {f!r} has sha256 {got}, the manifest says "
                                        f"{want['sha256']} (corrupt or altered)")
    return ckpt


def load_saved(name: str, models_dir: str | os.PathLike | None = None) -> Model:
    """Load a converted checkpoint recorded in the manifest, after verifying its files."""
    import orbax.checkpoint as ocp

    root = resolve_models_dir(models_dir)
    entries = read_manifest(root)["models"]
    if name not in entries:
        raise MissingCheckpointFilesError(f"no converted model named {name!r} in {str(root)!r}; recorded: "
                                          f"{', '.join(sorted(entries)) or 'none'}")
    entry = entries[name]
    ckpt = verify_files(name, entry, root)
    arch = get_architecture(entry["arch"])
    graphdef, state = abstract_model(arch, entry["num_classes"])
    pure = nnx.to_pure_dict(state)
    target = jax_tree_abstract(_str_tree(pure))
    try:
        restored = ocp.StandardCheckpointer().restore(ckpt.absolute(), target)
    except Exception as exc:  # noqa: BLE001 - orbax/tensorstore raise many types for a damaged checkpoint
        raise CheckpointError(f"cannot restore checkpoint {name!r} from {str(ckpt)!r}: {exc}") from None
    _fill(pure, restored)
    nnx.replace_by_pure_dict(state, pure)
    return Model(arch, graphdef, state, source=f"{name}: {entry['source']}")


def jax_tree_abstract(tree):
    import jax

    if isinstance(tree, dict):
        return {k: jax_tree_abstract(v) for k, v in tree.items()}
    return jax.ShapeDtypeStruct(tree.shape, tree.dtype)


def _fill(pure: dict, restored: dict) -> None:
    """Copy restored arrays (string keys) into the pure dict (whose list indices are ints)."""
    for k in pure:
        if isinstance(pure[k], dict):
            _fill(pure[k], restored[str(k)])
        else:
            pure[k] = np.asarray(restored[str(k)])
