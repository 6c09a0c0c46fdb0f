"""``load_model``: the embedded default, random weights for tests, or torchvision weights converted and cached."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..errors import CheckpointError, InvalidArgumentError, UnknownArchitectureError
from .architectures import ARCHITECTURES, get_architecture
from .convert import WeightsTypeError, check_weights_path, convert_state_dict, random_state_dict, read_state_dict
from .model import Model
from .store import (MANIFEST, REPO_MODELS_DIR, check_name, check_target, library_versions, load_saved,
                    read_manifest, resolve_models_dir, save_model, sha256_file)

EMBEDDED = {"efficientnet_lite0": "efficientnet_lite0"}  # architecture -> manifest entry shipped in models/
DEFAULT = "default"


class NoBundledWeightsError(CheckpointError):
    """An architecture asked for with its default weights, which only the embedded model has."""


def load_model(name: str = "efficientnet_lite0", weights=DEFAULT, *, models_dir=None, seed: int = 0) -> Model:
    """Load a model.

    - ``load_model("efficientnet_lite0")``: the embedded default (real ImageNet weights, shipped in ``models/``).
    - ``load_model("resnet50", weights="resnet50.pth")``: converts a torchvision state dict on first use, records
      it in the models directory's manifest, and loads the verified cached checkpoint on later calls (the cache key
      is the source file's sha256, so a changed file is converted again).
    - ``weights`` may also be a mapping of arrays or a ``torch.nn.Module`` (converted in memory, not cached).
    - ``weights=None``: deterministic random weights from ``numpy.random.default_rng(seed)`` (for tests).
    - ``name`` may also be the name of any converted checkpoint recorded in the manifest (checked by
      :func:`~jaxcam.models.store.check_name` first, so no name reaches outside the models directory).
    - The embedded entries are found in the repository's ``models/`` when the chosen directory does not hold them
      (so ``JAXCAM_MODELS_DIR`` can point at a store of one's own conversions).
    """
    if not isinstance(name, str):
        raise InvalidArgumentError(f"name must be an architecture or stored model name (a string), got "
                                   f"{type(name).__name__} {name!r}")
    if name not in ARCHITECTURES:
        check_name(name)
        entries = read_manifest(models_dir)["models"]
        if name not in entries:
            raise UnknownArchitectureError(name, list(ARCHITECTURES) + sorted(set(entries) - set(ARCHITECTURES)))
        if not (isinstance(weights, str) and weights == DEFAULT):
            raise InvalidArgumentError(f"{name!r} is a stored checkpoint with its own weights; weights= applies to "
                                       "architecture names only: drop it, or load the architecture with weights=...")
        return load_saved(name, models_dir)
    arch = get_architecture(name)
    if weights is None:
        return convert_state_dict(arch, random_state_dict(arch, seed), source=f"random weights (numpy seed {seed})")
    if isinstance(weights, str) and weights == DEFAULT:
        if name not in EMBEDDED:
            raise NoBundledWeightsError(f"{name} has no bundled weights: pass weights='path/to/torchvision.pth' "
                                        "(converted once and cached) or weights=None for random weights")
        return load_embedded(EMBEDDED[name], models_dir)
    if isinstance(weights, (str, os.PathLike)):
        return _load_file(name, os.fspath(weights), models_dir)
    if isinstance(weights, Mapping) or hasattr(weights, "state_dict"):
        return convert_state_dict(arch, weights, source=f"in-memory {type(weights).__name__}")
    raise WeightsTypeError(f"weights must be 'default', None, a path, a mapping of arrays or a torch.nn.Module; "
                           f"got {type(weights).__name__}")


def load_embedded(entry: str, models_dir=None) -> Model:
    """An embedded checkpoint from the chosen models directory when its manifest records it, else from the
    repository's ``models/`` (:data:`~jaxcam.models.store.REPO_MODELS_DIR`), where it ships."""
    root = resolve_models_dir(models_dir)
    if entry not in read_manifest(root)["models"] and (REPO_MODELS_DIR / MANIFEST).is_file():
        root = REPO_MODELS_DIR
    return load_saved(entry, root)


def _load_file(name: str, path: str, models_dir) -> Model:
    path = check_weights_path(path)
    digest = sha256_file(path)
    entry_name = f"{name}-{digest[:12]}"
    entry = read_manifest(models_dir)["models"].get(entry_name)
    if entry is not None and entry.get("source_sha256") == digest:
        return load_saved(entry_name, models_dir)
    return convert_and_save(name, path, entry_name, models_dir=models_dir, source_sha256=digest)


def convert_and_save(name: str, weights, entry_name: str, *, models_dir=None, source_sha256: str | None = None,
                     source: str | None = None) -> Model:
    """Convert a torchvision state dict, measure logit parity against torchvision (when torch is installed),
    write the checkpoint and its manifest entry, and return the model. ``entry_name`` is checked (and its folder
    found free or replaceable, see :func:`~jaxcam.models.store.check_target`) before any work."""
    check_target(entry_name, models_dir)
    sd = read_state_dict(weights)
    source = source or (os.path.abspath(weights) if isinstance(weights, (str, os.PathLike)) else "state dict")
    model = convert_state_dict(name, sd, source=source)
    diff, reference = torch_parity(model, sd)
    save_model(model, entry_name, resolve_models_dir(models_dir), source=source, source_sha256=source_sha256,
               max_abs_logit_diff=diff, parity_reference=reference,
               versions=library_versions("torch", "torchvision"))
    return model


def parity_batch(size: int = 224, n: int = 2, seed: int = 0) -> np.ndarray:
    """The fixed input on which conversion-time parity is measured: N(0, 1) pixels, NHWC."""
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def torch_parity(model: Model, sd: Mapping) -> tuple[float | None, str]:
    """Max |logit difference| between ``model`` and torchvision's model loaded with ``sd``, on
    :func:`parity_batch`. Returns ``(None, reason)`` when torch/torchvision are absent or have no such model."""
    if model.arch.torchvision is None:
        return None, f"not measured: {model.name} has no torchvision counterpart"
    try:
        import torch
        import torchvision
    except ImportError:
        return None, "not measured: torch/torchvision not installed"
    tmodel = getattr(torchvision.models, model.arch.torchvision)(num_classes=model.num_classes)
    res = tmodel.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=False)
    if res.unexpected_keys or any(not k.endswith("num_batches_tracked") for k in res.missing_keys):
        raise CheckpointError(f"torchvision {model.arch.torchvision} rejected the state dict: "
                              f"{' '.join(str(res).split())}")
    tmodel.eval()
    x = parity_batch(model.arch.input_size)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    diff = float(np.max(np.abs(np.asarray(model(x)) - ref)))
    return diff, f"torchvision {torchvision.__version__} {model.arch.torchvision}, N(0,1) input {x.shape} NHWC"
