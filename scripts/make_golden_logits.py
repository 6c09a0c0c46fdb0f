"""Golden logits of every torchvision architecture with deterministic random weights, for torch-free tests.

For each architecture the weights are ``jaxcam.models.random_state_dict(arch, seed=0)`` (NumPy, so tests can
regenerate them without torch), loaded into torchvision's model; its logits on a fixed NumPy input are stored in
tests/fixtures/torchvision_random_logits.npz together with the input and a fingerprint of the weights (which
detects a change in NumPy's random stream). No weights are committed.

    pip install -e '.[torch]' && python scripts/make_golden_logits.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxcam.models import ARCHITECTURES, random_state_dict

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "torchvision_random_logits.npz"
INPUT_SHAPE = (2, 64, 64, 3)  # small, and at 64x64 VGG's adaptive pooling upsamples 2x2 -> 7x7


def golden_input() -> np.ndarray:
    return np.random.default_rng(1234).standard_normal(INPUT_SHAPE).astype(np.float32)


def fingerprint(sd: dict) -> np.ndarray:
    """Four numbers that change if the random weights change: sums of the first and last tensors' values."""
    keys = sorted(sd)
    return np.array([sd[keys[0]].sum(), np.abs(sd[keys[0]]).sum(), sd[keys[-1]].sum(), np.abs(sd[keys[-1]]).sum()],
                    np.float64)


def main() -> None:
    import torch
    import torchvision

    torch.set_num_threads(2)
    x = golden_input()
    out = {"input": x, "torchvision_version": np.array(torchvision.__version__)}
    for name, arch in ARCHITECTURES.items():
        if arch.torchvision is None:
            continue
        sd = random_state_dict(name, seed=0)
        tm = getattr(torchvision.models, arch.torchvision)()
        res = tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
        assert not res.unexpected_keys and all(k.endswith("num_batches_tracked") for k in res.missing_keys), res
        tm.eval()
        with torch.no_grad():
            logits = tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        out[f"{name}/logits"] = logits
        out[f"{name}/fingerprint"] = fingerprint(sd)
        print(f"{name}: logits std {logits.std():.3f}", flush=True)
    np.savez_compressed(OUT, **out)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
