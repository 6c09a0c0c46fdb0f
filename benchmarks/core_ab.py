"""A/B of jaxcam's explain programs between two checkouts on this machine (jaxcam alone, no PyTorch).

    python benchmarks/core_ab.py --before /tmp/jaxcam-before [--after .] [--rounds 3] [--out results/core-ab.md]

Each (checkout, workload) runs in a fresh process importing that checkout's ``jaxcam``; the processes alternate
before/after for ``--rounds`` rounds, so background load hits both sides alike. Per process: the first call
(compilation included) is reported apart, then the median of ``--repeats`` steady calls. The ratio is after/before
of the medians over rounds (1.00 = unchanged; below 1 is faster). Maps are compared between the two sides before
any number is trusted (max |difference| reported).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOADS = {  # name: (architecture, batch, size, methods, layer)
    "gradcam resnet50 b8": ("resnet50", 8, 224, ["gradcam"], None),
    "7 gradient methods resnet50 b8": ("resnet50", 8, 224, ["gradcam", "gradcam++", "xgradcam", "hirescam",
                                                            "gradcam_elementwise", "layercam", "eigengradcam"], None),
    "gradcam efficientnet_lite0 b8": ("efficientnet_lite0", 8, 224, ["gradcam"], None),
    "ablationcam resnet18 b2 layer4": ("resnet18", 2, 224, ["ablationcam"], "layer4"),
    "fullgrad resnet18 b4": ("resnet18", 4, 224, ["fullgrad"], None),
}

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np, jax, jaxcam
arch, n, size, methods, layer, repeats = {args!r}
model = jaxcam.load_model(arch) if arch == "efficientnet_lite0" else jaxcam.load_model(arch, weights=None)
x = np.random.default_rng(0).standard_normal((n, size, size, 3)).astype(np.float32)
def call():
    out = jaxcam.explain(model, x, methods, layer=layer, preprocessed=True)
    return jax.block_until_ready(out)
t = time.perf_counter(); first = call(); first_s = time.perf_counter() - t
times = []
for _ in range(repeats):
    t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
np.savez({maps!r}, **{{k: np.asarray(v) for k, v in first.items()}})
print(json.dumps({{"first_s": first_s, "times": times}}))
"""


def run_one(root: str, workload: str, repeats: int, maps_path: str) -> dict:
    arch, n, size, methods, layer = WORKLOADS[workload]
    code = CHILD.format(root=os.path.abspath(root), args=(arch, n, size, methods, layer, repeats), maps=maps_path)
    env = dict(os.environ, JAXCAM_COMPILATION_CACHE="off", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="a checkout of the earlier commit")
    p.add_argument("--after", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="*", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--out", default=None, help="write the markdown table here too")
    args = p.parse_args(argv)
    import numpy as np

    lines = ["| workload | before: steady median (ms) | after (ms) | after/before | first call before / after (s) "
             "| max map difference |", "|---|---|---|---|---|---|"]
    for w in args.only:
        med = {"before": [], "after": []}
        first = {"before": [], "after": []}
        for _ in range(args.rounds):
            for side in ("before", "after"):
                r = run_one(getattr(args, side), w, args.repeats, f"/tmp/core_ab_{side}.npz")
                med[side].append(statistics.median(r["times"]) * 1e3)
                first[side].append(r["first_s"])
        with np.load("/tmp/core_ab_before.npz") as a, np.load("/tmp/core_ab_after.npz") as b:
            diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
        b, a = statistics.median(med["before"]), statistics.median(med["after"])
        lines.append(f"| {w} | {b:.0f} | {a:.0f} | {a / b:.2f} | {statistics.median(first['before']):.1f} / "
                     f"{statistics.median(first['after']):.1f} | {diff:.1e} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
