"""Converted checkpoints on disk: orbax-checkpoint directories under a models directory, with ``manifest.json``.

The models directory is, in order: the ``models_dir`` argument, the ``JAXCAM_MODELS_DIR`` environment variable,
the repository's ``models/`` folder (when jaxcam runs from a source checkout that has one), else
``~/.cache/jaxcam/models``. Each entry of ``manifest.json`` records the architecture, the source and its sha256,
the sha256 and size of every file of the converted checkpoint, the library versions used, and the max |logit
difference| against the source model measured at conversion time. Loading verifies every file first and raises
:class:`~jaxcam.CheckpointError` subclasses on missing, truncated or altered files.

Names and the manifest are untrusted input: every entry name, every manifest ``path`` and every recorded file name
passes :func:`check_name` (one validator for the API, the loader and the CLI), so nothing can address a file
outside the models directory. The store deletes only what it created: its own ``mkdtemp`` staging folders, and an
entry's old checkpoint when replacing it, and only when that folder is a recorded checkpoint holding nothing the
manifest does not list (a symlink, a foreign folder or extra files make the save fail instead).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import unicodedata
from importlib import metadata
from pathlib import Path

import numpy as np
from flax import nnx

from ..errors import (ChecksumMismatchError, CheckpointError, CorruptFileError, InvalidNameError,
                      MissingCheckpointFilesError)
from .architectures import ARCHITECTURES, get_architecture
from .convert import abstract_model, check_finite
from .model import Model

MANIFEST = "manifest.json"
ENV_VAR = "JAXCAM_MODELS_DIR"
REPO_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
MAX_NAME_BYTES = 128  # a name plus the staging prefix/suffix stays far below every filesystem's 255-byte limit


class CorruptManifestError(CheckpointError, CorruptFileError):
    """A ``manifest.json`` that does not parse, or an entry whose fields are missing or of the wrong type."""


class NameInUseError(InvalidNameError, FileExistsError):
    """The entry's folder exists but is not a checkpoint the manifest records (or holds more than it records), so
    the store refuses to replace it: it never deletes what it did not create."""


def check_name(name, what: str = "model name", *, hidden_ok: bool = False) -> str:
    """``name`` if it is usable as one folder or file name inside the models directory, else
    :class:`~jaxcam.InvalidNameError` saying which rule it breaks.

    Rules: a non-empty string, not ``.``/``..``, not absolute, no path separator (``/`` or ``\\``), no NUL,
    control or invisible formatting character, no leading/trailing whitespace, not starting with ``.`` (hidden
    names are the store's staging folders; ``hidden_ok`` allows them for files inside a checkpoint), at most
    :data:`MAX_NAME_BYTES` bytes of UTF-8. ``what`` names the value in the message (an argument, a manifest field).
    """
    def bad(rule: str):
        return InvalidNameError(f"{what} {name!r} {rule}; choose a name like 'resnet18-pets' (letters, digits, "
                                "'-', '_', '.')")

    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a string, got {type(name).__name__} {name!r}")
    if not name:
        raise bad("is empty")
    for c in name:
        if unicodedata.category(c) in ("Cc", "Cf", "Cs"):  # NUL, newlines, DEL, bidi overrides, surrogates
            raise bad(f"must be a plain name: it contains the control or formatting character {c!r}")
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise bad("must be a plain name, not an absolute path")
    if name in (".", ".."):
        raise bad("must be a plain name, not a reference to a directory")
    if "/" in name or "\\" in name:
        raise bad("must be a plain name: it contains a path separator")
    if name.startswith(".") and not hidden_ok:
        raise bad("must be a plain name, not starting with '.' (hidden names are reserved for staging folders)")
    if name != name.strip():
        raise bad("must be a plain name, without leading or trailing whitespace")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise bad(f"is too long ({len(name.encode('utf-8', 'surrogatepass'))} bytes of UTF-8, at most "
                  f"{MAX_NAME_BYTES})")
    return name


def check_relative_path(path, what: str) -> str:
    """A file name recorded inside a checkpoint (``ocdbt.process_0/d/...``): '/'-separated parts, each passing
    :func:`check_name` (hidden parts allowed), so it can only name a file below the checkpoint's folder."""
    if not isinstance(path, str) or not path:
        raise InvalidNameError(f"{what} {path!r} must be a non-empty relative path")
    if path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", path):
        raise InvalidNameError(f"{what} {path!r} must be a relative path inside the checkpoint, not absolute")
    for part in path.split("/"):
        check_name(part, f"{what} {path!r}: part", hidden_ok=True)
    return path


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
    """The models directory's manifest (empty when it has none); :class:`CorruptManifestError` naming the file
    when it is not a JSON object with a ``models`` table. Entries are checked where used (:func:`check_entry`)."""
    path = resolve_models_dir(models_dir) / MANIFEST
    if not os.path.lexists(path):
        return {"format": 1, "models": {}}
    try:
        if not path.is_file():  # a folder, a FIFO (which would block the read) or a dangling link
            raise ValueError("not a regular file")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
            raise ValueError("no 'models' table")
    except (OSError, ValueError, RecursionError) as exc:
        raise CorruptManifestError(f"corrupt model manifest {str(path)!r}: {exc}; restore it, or move it away "
                                   "and convert the models again") from None
    return manifest


def check_entry(name: str, entry, models_dir: str | os.PathLike) -> Path:
    """Check one manifest entry's fields (types, architecture, ``path`` and file names, which are data and could
    point anywhere) and return its checkpoint folder. Raises :class:`CorruptManifestError` or
    :class:`~jaxcam.InvalidNameError` naming the manifest file and the entry."""
    root = Path(models_dir)
    where = f"manifest {str(root / MANIFEST)!r}, entry {name!r}"
    check_name(name, f"{where}: the entry name")

    def bad(problem: str):
        return CorruptManifestError(f"{where}: {problem}; the manifest was edited or damaged: restore it or convert "
                                    "the model again")

    if not isinstance(entry, dict):
        raise bad(f"expected a table, got {type(entry).__name__}")
    if entry.get("arch") not in ARCHITECTURES:
        raise bad(f"unknown architecture {entry.get('arch')!r} (valid: {', '.join(ARCHITECTURES)})")
    n = entry.get("num_classes")
    if type(n) is not int or n < 1:
        raise bad(f"'num_classes' must be a positive integer, got {n!r}")
    if not isinstance(entry.get("source", ""), str):
        raise bad(f"'source' must be a string, got {type(entry['source']).__name__}")
    files = entry.get("files")
    if not isinstance(files, dict):
        raise bad(f"'files' must be a table of file -> {{sha256, bytes}}, got {type(files).__name__}")
    if not files:
        raise bad("'files' is empty")
    for f, rec in files.items():
        check_relative_path(f, f"{where}: file")
        if not isinstance(rec, dict) or type(rec.get("bytes")) is not int or rec["bytes"] < 0 or \
                not isinstance(rec.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", rec["sha256"]):
            raise bad(f"file {f!r} must record 'sha256' (64 hex digits) and 'bytes' (an integer), got {rec!r}")
    return root / check_name(entry.get("path", name), f"{where}: 'path'")


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


def check_target(name: str, models_dir: str | os.PathLike | None = None) -> Path:
    """Before any work, that ``name`` is valid and its folder in the models directory is either free or a recorded
    checkpoint the store may replace (:class:`NameInUseError` otherwise); returns that folder."""
    root = resolve_models_dir(models_dir)
    folder = root / check_name(name)
    if os.path.lexists(folder):
        _check_replaceable(name, folder, read_manifest(root)["models"].get(name), root)
    return folder


def _check_replaceable(name: str, folder: Path, entry, root: Path) -> None:
    """The store replaces only what it wrote: a real folder that the manifest records under ``name``, holding no
    file or link the manifest does not list."""
    where = f"models directory {str(root)!r} already holds {name!r}"
    fix = "jaxcam never deletes what it did not create: move it away yourself, or choose another name"
    if folder.is_symlink() or not folder.is_dir():
        kind = "a symbolic link" if folder.is_symlink() else "a file"
        raise NameInUseError(f"{where} as {kind}; {fix}")
    if entry is None or check_entry(name, entry, root) != folder:
        raise NameInUseError(f"{where}, a folder its manifest {MANIFEST} does not record as that checkpoint; {fix}")
    extra = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink() or (n in filenames and rel not in entry["files"]):
                extra.append(rel)
    if extra:
        raise NameInUseError(f"{where}, a recorded checkpoint that also holds {len(extra)} file(s) or link(s) the "
                             f"manifest does not list ({', '.join(sorted(extra)[:5])}); {fix}")


def save_model(model: Model, name: str, models_dir: str | os.PathLike | None = None, *, source: str,
               source_sha256: str | None, max_abs_logit_diff: float | None, parity_reference: str,
               versions: dict | None = None) -> dict:
    """Write ``model`` as an orbax checkpoint ``<models_dir>/<name>/`` and record it in the manifest.

    The checkpoint is written into a fresh ``mkdtemp`` staging folder; an existing entry (only a recorded one, see
    :func:`check_target`) is moved aside, the new folder swapped in and the manifest written, and only then is the
    old folder removed, with the staging folder. A failure at any step puts the old checkpoint back."""
    import orbax.checkpoint as ocp

    root = resolve_models_dir(models_dir)
    check_target(name, root)
    check_finite(_flat(nnx.to_pure_dict(model.params)), f"model {model.name!r} ({model.source})")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-", suffix=".tmp"))
    try:
        new, old = staging / "checkpoint", staging / "replaced"
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(new.absolute(), jax_tree_to_numpy(_str_tree(nnx.to_pure_dict(model.params))))
        ckptr.wait_until_finished()
        entry = {
            "arch": model.arch.name, "num_classes": model.num_classes, "format": "orbax-checkpoint",
            "path": name, "source": source, "source_sha256": source_sha256, "files": _file_table(new),
            "versions": versions or library_versions(), "max_abs_logit_diff": max_abs_logit_diff,
            "parity_reference": parity_reference,
            "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        }
        final = check_target(name, root)  # again: the folder may have changed while the checkpoint was written
        manifest = read_manifest(root)
        manifest["models"][name] = entry
        replacing = os.path.lexists(final)
        if replacing:
            os.replace(final, old)
        try:
            os.replace(new, final)
            try:
                _write_manifest(root, manifest)
            except BaseException:
                os.replace(final, new)
                raise
        except BaseException:
            if replacing:
                os.replace(old, final)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def jax_tree_to_numpy(tree):
    return {k: jax_tree_to_numpy(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree)


def verify_files(name: str, entry: dict, models_dir: Path) -> Path:
    """Check the manifest entry (:func:`check_entry`) and that every file of its checkpoint is present, complete
    and unaltered; returns the checkpoint's folder."""
    ckpt = check_entry(name, entry, models_dir)
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
    check_name(name)
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
        raise CheckpointError(f"cannot restore checkpoint {name!r} from {str(ckpt)!r}: "
                              f"{' '.join(str(exc).split())}") from None
    _fill(pure, restored)
    check_finite(_flat(pure), f"checkpoint {name!r} in {str(root)!r}")
    nnx.replace_by_pure_dict(state, pure)
    return Model(arch, graphdef, state, source=f"{name}: {entry.get('source', 'unknown source')}")


def jax_tree_abstract(tree):
    import jax

    if isinstance(tree, dict):
        return {k: jax_tree_abstract(v) for k, v in tree.items()}
    return jax.ShapeDtypeStruct(tree.shape, tree.dtype)


def _flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested parameter dict as ``{"layer1.0.conv1.kernel": array}``, for messages that name parameters."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fill(pure: dict, restored: dict) -> None:
    """Copy restored arrays (string keys) into the pure dict (whose list indices are ints)."""
    for k in pure:
        if isinstance(pure[k], dict):
            _fill(pure[k], restored[str(k)])
        else:
            pure[k] = np.asarray(restored[str(k)])
