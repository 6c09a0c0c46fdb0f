"""explain() follows its input's sharding: a batch split over 4 (simulated CPU) devices gives the same maps."""

import os
import subprocess
import sys

SCRIPT = """
import jax, numpy as np, jaxcam
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
assert len(jax.devices()) == 4
model = jaxcam.load_model("resnet18", weights=None)
x = np.random.default_rng(0).uniform(-2, 2, (4, 64, 64, 3)).astype(np.float32)
ref = jaxcam.explain(model, x, ["gradcam", "layercam"], preprocessed=True)
xs = jax.device_put(x, NamedSharding(Mesh(jax.devices(), ("batch",)), P("batch")))
maps = jaxcam.explain(model, xs, ["gradcam", "layercam"], preprocessed=True)
assert len(maps["gradcam"].sharding.device_set) == 4
print(max(float(np.abs(np.asarray(maps[k]) - np.asarray(ref[k])).max()) for k in maps))
"""


def test_sharded_batch_gives_the_same_maps():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.strip().splitlines()[-1]) < 1e-5
