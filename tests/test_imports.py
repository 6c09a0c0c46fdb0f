"""Importing jaxcam and running a prediction never imports torch, cv2, matplotlib, transformers or equinox."""

import subprocess
import sys

CODE = """
import sys
import jaxcam
model = jaxcam.load_model()
pred = model.predict(list(jaxcam.sample_images(["coffee"]).values()), k=1)
assert pred.classes[0, 0] == 967
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm", "cv2", "matplotlib",
                                                              "transformers", "equinox"))
assert not bad, bad
print("ok")
"""


def test_no_heavy_or_optional_imports():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_public_api_is_explicit():
    import jaxcam

    assert all(hasattr(jaxcam, name) for name in jaxcam.__all__)
    assert {"load_model", "split", "Model", "JaxcamError"} <= set(jaxcam.__all__)
