"""Weight conversion between torchvision-layout state dicts and jaxcam models.

A source state dict maps PyTorch keys (``layer1.0.conv1.weight``) to arrays in PyTorch layout. The mapping is
mechanical because module names mirror the source: the Flax path joined with dots is the key, with the leaf
renamed (``kernel``/``scale`` -> ``weight``, ``mean`` -> ``running_mean``, ``var`` -> ``running_var``) and the
array transposed (conv OIHW -> HWIO, linear (out, in) -> (in, out); a linear that consumes an NCHW-flattened map
also has its rows permuted to NHWC order). Conversion is strict: every missing, unexpected or mis-shaped key is
reported in one :class:`~jaxcam.StateDictError`; only BatchNorm's ``num_batches_tracked`` counters are dropped,
since they do not affect inference.

Weights files are untrusted: ``.npz`` archives are read with ``allow_pickle=False`` after their header is checked,
so an empty, truncated, pickled or object-holding file is a :class:`~jaxcam.CorruptFileError` naming it, and
``.pth`` files only through torch's ``weights_only=True`` loader. Non-finite values (one NaN in ``fc.weight``
makes every logit NaN and every map blank) are refused with :class:`~jaxcam.NonFiniteParametersError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from flax import nnx

from ..errors import (CheckpointError, CorruptFileError, InvalidArgumentError, MissingDependencyError,
                      NonFiniteParametersError, StateDictError)
from .architectures import Architecture, get_architecture
from .model import Model

_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_IGNORED = ("num_batches_tracked",)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local file header, or an empty zip's directory


class WeightsFileNotFoundError(CheckpointError, FileNotFoundError):
    """A weights path that does not exist, is a directory, a broken link or a link loop, or cannot be read."""


class WeightsTypeError(InvalidArgumentError, TypeError):
    """``weights`` of a type that is neither a path, a mapping of arrays nor a ``torch.nn.Module``."""


def abstract_model(arch: Architecture | str, num_classes: int = 1000):
    """``(graphdef, abstract_state)`` of an architecture, without allocating or initialising any weights."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    module = nnx.eval_shape(lambda: arch.build(num_classes, nnx.Rngs(0)))
    return nnx.split(module)


def source_key(path: tuple) -> str:
    return ".".join(str(p) for p in path[:-1]) + "." + _SUFFIX[path[-1]]


def key_map(arch: Architecture | str, num_classes: int = 1000) -> dict[str, tuple[tuple, tuple]]:
    """``{source key: (flax path, flax shape)}`` for every parameter and statistic of the architecture."""
    _, state = abstract_model(arch, num_classes)
    return {source_key(path): (path, tuple(var.shape)) for path, var in nnx.to_flat_state(state)}


def _to_flax(arch: Architecture, key: str, a: np.ndarray) -> np.ndarray:
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if a.ndim == 2:
        if key in arch.nchw_flatten:
            c, h, w = arch.nchw_flatten[key]
            return a.reshape(a.shape[0], c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, a.shape[0])
        return a.T
    return a


def _to_source(arch: Architecture, key: str, a: np.ndarray) -> np.ndarray:
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    if a.ndim == 2:
        if key in arch.nchw_flatten:
            c, h, w = arch.nchw_flatten[key]
            return a.reshape(h, w, c, a.shape[1]).transpose(3, 2, 0, 1).reshape(a.shape[1], c * h * w)
        return a.T
    return a


def _source_shape(arch: Architecture, key: str, flax_shape: tuple) -> tuple:
    return _to_source(arch, key, np.empty(flax_shape, np.bool_)).shape


def expected_source_shapes(arch: Architecture | str, num_classes: int = 1000) -> dict[str, tuple]:
    """``{source key: shape in PyTorch layout}``: what a state dict for this architecture must hold."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    return {k: _source_shape(arch, k, shape) for k, (_, shape) in key_map(arch, num_classes).items()}


def check_weights_path(path: str | os.PathLike) -> str:
    """``path`` as a string if it is a readable regular file, else :class:`WeightsFileNotFoundError` naming it."""
    path = os.fspath(path)
    hint = "pass a torchvision state dict saved as .pth/.pt or .npz"
    if not os.path.exists(path):
        what = "is a broken symbolic link or a link loop" if os.path.lexists(path) else "not found"
        raise WeightsFileNotFoundError(f"weights file {path!r} {what}: {hint}")
    if not os.path.isfile(path):
        raise WeightsFileNotFoundError(f"weights file {path!r} is not a regular file (a directory?): {hint}")
    if not os.access(path, os.R_OK):
        raise WeightsFileNotFoundError(f"weights file {path!r} is not readable (permissions)")
    return path


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The numeric arrays of an ``.npz`` archive, never unpickling anything; :class:`~jaxcam.CorruptFileError`
    naming the file and what is wrong with it otherwise (NumPy's own messages would suggest unsafe loading)."""
    def bad(problem: str):
        return CorruptFileError(f"weights file {path!r} {problem}: save the state dict with "
                                "numpy.savez(path, **{key: array}) of numeric arrays")

    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise bad("is empty (0 bytes)")
    if not head.startswith(_ZIP_MAGIC):
        if head.startswith(b"\x93NUMPY"):
            raise bad("is a single .npy array, not an .npz archive of {key: array}")
        if head[:1] == b"\x80":
            raise bad("is a Python pickle, not an .npz archive; jaxcam never unpickles weights")
        raise bad(f"is not an .npz archive (no zip header; it starts with {head!r})")
    sd = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                try:
                    sd[key] = archive[key]
                except ValueError as exc:
                    problem = "an object array, which jaxcam never unpickles" if "pickle" in str(exc) else \
                        f"no valid .npy array ({' '.join(str(exc).split())})"
                    raise bad(f"holds {key!r} as {problem}") from None
    except CorruptFileError:
        raise
    except MemoryError:
        raise bad("declares an array larger than the memory available") from None
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib, bz2, lzma and numpy raise many types for a bad archive
        detail = "" if "pickle" in str(exc) else f" ({' '.join(str(exc).split())})"
        raise bad(f"is truncated or not a valid .npz archive{detail}") from None
    if not sd:
        raise bad("holds no arrays")
    for key, a in sd.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            kind = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise bad(f"holds {key!r} as {kind}, not a numeric array")
    return sd


def _read_torch(path: str) -> Mapping:
    """A .pth/.pt state dict through torch's ``weights_only=True`` loader (tensors and containers only)."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            f"reading {path!r} needs torch; install the extra: pip install 'jax-cam[torch]' (or convert the "
            "file to .npz where torch is installed)") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt file
        if type(exc).__name__ == "UnpicklingError":  # weights_only refused a Python object: never retry unsafely
            raise CorruptFileError(f"cannot read weights file {path!r}: it holds Python objects besides tensors, "
                                   "which jaxcam never unpickles; save model.state_dict() instead") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read weights file {path!r} (truncated or not a torch checkpoint): "
                              f"{first}") from None


def read_state_dict(weights) -> dict[str, np.ndarray]:
    """A state dict as ``{key: numpy array}`` from a .pth/.pt path (needs torch), a .npz path, a mapping of arrays
    or tensors, or a ``torch.nn.Module``. A checkpoint that wraps its state dict under ``"state_dict"`` or
    ``"model"`` is unwrapped, and a ``"module."`` prefix carried by every key (DataParallel) is removed."""
    if isinstance(weights, (str, os.PathLike)):
        path = check_weights_path(weights)
        sd = read_npz(path) if path.lower().endswith(".npz") else _read_torch(path)
    elif hasattr(weights, "state_dict") and callable(weights.state_dict):
        sd = weights.state_dict()
    elif isinstance(weights, Mapping):
        sd = weights
    else:
        raise WeightsTypeError(f"weights must be a path, a mapping of arrays or a torch.nn.Module, got "
                               f"{type(weights).__name__}")
    if not isinstance(sd, Mapping):
        raise CorruptFileError(f"weights {_describe(weights)} hold a {type(sd).__name__}, not a state dict "
                               "{key: tensor}: save model.state_dict()")
    for wrapper in ("state_dict", "model"):
        if isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
    sd = {str(k): _as_numpy(v) for k, v in sd.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _describe(weights) -> str:
    return repr(os.fspath(weights)) if isinstance(weights, (str, os.PathLike)) else f"({type(weights).__name__})"


def check_finite(arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Refuse parameters holding NaN or infinity (:class:`~jaxcam.NonFiniteParametersError` naming each one and
    the counts): one NaN in a classifier makes every logit NaN and every map blank. One pass per array."""
    bad = []
    for key, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind in "fc":
            n = a.size - int(np.count_nonzero(np.isfinite(a)))
            if n:
                bad.append((key, n, int(np.count_nonzero(np.isnan(a)))))
    if bad:
        total = sum(n for _, n, _ in bad)
        listed = ", ".join(f"{k!r} ({_counts(nan, n - nan)})" for k, n, nan in bad[:20])
        more = f", ... ({len(bad) - 20} more)" if len(bad) > 20 else ""
        raise NonFiniteParametersError(
            f"{source} holds {total} non-finite value(s) (NaN or infinity) in {len(bad)} parameter(s): "
            f"{listed}{more}; such weights give NaN logits and blank maps: export the weights again from a "
            "model whose parameters are finite")


def _as_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def num_classes_of(arch: Architecture, sd: Mapping) -> int:
    head = sd.get(arch.head_key)
    return int(head.shape[0]) if head is not None and getattr(head, "ndim", 0) == 2 else 1000


def _counts(nan: int, inf: int) -> str:
    return " and ".join(c for c in (nan and f"{nan} NaN", inf and f"{inf} inf") if c)


def convert_state_dict(arch: Architecture | str, weights, *, source: str | None = None) -> Model:
    """Build a :class:`Model` from a source state dict (see :func:`read_state_dict`). Strict: raises
    :class:`~jaxcam.StateDictError` listing every missing, unexpected and mis-shaped key."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    sd = read_state_dict(weights)
    source = source or (os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else "state dict")
    n = num_classes_of(arch, sd)
    graphdef, state = abstract_model(arch, n)
    kmap = {source_key(p): (p, tuple(v.shape)) for p, v in nnx.to_flat_state(state)}
    present = {k for k in sd if not k.endswith(_IGNORED)}
    missing = sorted(set(kmap) - present)
    unexpected = sorted(present - set(kmap))
    mismatched = []
    for k in sorted(set(kmap) & present):
        want = _source_shape(arch, k, kmap[k][1])
        if tuple(sd[k].shape) != want:
            mismatched.append((k, want, tuple(sd[k].shape)))
    if missing or unexpected or mismatched:
        raise StateDictError(arch.name, missing, unexpected, mismatched)
    used = {k: sd[k] for k in kmap}
    for k, a in used.items():
        if a.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"weights from {source}: {k!r} has dtype {a.dtype}, expected real numbers")
    check_finite(used, f"weights from {source}")
    pure = nnx.to_pure_dict(state)
    for k, (path, _) in kmap.items():
        node = pure
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = np.ascontiguousarray(_to_flax(arch, k, sd[k].astype(np.float32)))
    nnx.replace_by_pure_dict(state, pure)
    return Model(arch, graphdef, state, source=source)


def model_state_dict(model: Model) -> dict[str, np.ndarray]:
    """The inverse of :func:`convert_state_dict`: the model's parameters as a PyTorch-layout state dict."""
    return {source_key(path): np.ascontiguousarray(_to_source(model.arch, source_key(path), np.asarray(v[...])))
            for path, v in nnx.to_flat_state(model.params)}


def random_state_dict(arch: Architecture | str, seed: int = 0, num_classes: int = 1000) -> dict[str, np.ndarray]:
    """Deterministic random weights in PyTorch layout, drawn from ``numpy.random.default_rng(seed)``.

    Scales keep activations of order one through the deepest networks, so logits are O(1) and parity tolerances
    are meaningful: He-normal convs, LeCun-normal linears, BatchNorm gamma in [0.1, 0.5] on the last BN of a
    residual branch and [0.5, 1.5] elsewhere, small biases and running means, running variances in [0.5, 1.5]."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in sorted(expected_source_shapes(arch, num_classes).items()):
        leaf = key.rsplit(".", 1)[-1]
        if len(shape) >= 2:  # conv weight: He normal on fan-in; linear: LeCun normal (keeps VGG logits O(1))
            fan_in = int(np.prod(shape[1:]))
            a = rng.standard_normal(shape) * np.sqrt((2.0 if len(shape) == 4 else 1.0) / fan_in)
        elif leaf == "running_var":
            a = rng.uniform(0.5, 1.5, shape)
        elif leaf == "running_mean":
            a = rng.normal(0.0, 0.1, shape)
        elif leaf == "weight":  # BatchNorm gamma
            hi = 0.5 if _is_branch_end(key) else 1.5
            a = rng.uniform(0.1 if hi == 0.5 else 0.5, hi, shape)
        else:  # biases
            a = rng.normal(0.0, 0.05, shape)
        out[key] = a.astype(np.float32)
    return out


def _is_branch_end(key: str) -> bool:
    """The BatchNorm that closes a residual branch (ResNet bn2/bn3 of a block, MBConv _bn2)."""
    parts = key.split(".")
    return len(parts) >= 3 and parts[-2] in ("bn2", "bn3", "_bn2") and parts[0] != "_bn2"
