"""Peak memory and wall time of ``jaxcam explain IMAGE --out DIR`` on untrusted and huge image files.

Each case runs in a fresh process (the default embedded model, the persistent compilation cache off so every run
compiles the same way); its peak resident set size is the child's ``ru_maxrss`` from ``os.wait4``. Cases:

- ``photo-640x480``: an ordinary 640x480 JPEG (scikit-image's astronaut, resized), the reference;
- ``jpeg-10000x10000``: a 10000x10000 JPEG, quality 90 (a smooth gradient plus noise of sigma 1: about 4 MB);
- ``png-bomb-60000x60000``: the 69-byte PNG whose header claims 60000x60000 pixels.

The inputs are made in a separate process: Linux records a process's peak RSS at ``exec`` into the child's
``ru_maxrss``, so a parent that had held the 300 MB image would raise every child's number to its own.

``--before TREE`` runs the same cases a second time with ``PYTHONPATH=TREE`` (a clean clone of an older commit),
so the table shows both. Writes ``benchmarks/results/untrusted-images-cpu.md`` (and the raw numbers as JSON).

    git clone -q /work/main /tmp/before && git -C /tmp/before checkout -q <commit before the decoder>
    git clone -q /work/main /tmp/after
    python benchmarks/untrusted_images.py --before /tmp/before --after /tmp/after
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "untrusted-images-cpu")
CLI = "import sys; from jaxcam.cli import main; sys.exit(main(sys.argv[1:]))"


# ------------------------------------------------------------------------------------------------- inputs
def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(path: str, side: int = 60000) -> None:
    """69 bytes: a PNG header claiming ``side x side`` RGB pixels around 100 compressed zero bytes."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 100, 9))
                + _chunk(b"IEND", b""))


def huge_jpeg(path: str, side: int = 10000, band: int = 500) -> None:
    """A ``side x side`` JPEG at quality 90: RGB gradients plus Gaussian noise (sigma 1), built in bands of rows so
    generating it never holds more than the uint8 image and one float band."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = np.empty((side, side, 3), np.uint8)
    x = np.arange(side, dtype=np.float32) / side
    for top in range(0, side, band):
        y = (np.arange(top, min(top + band, side), dtype=np.float32) / side)[:, None]
        rgb = np.stack(np.broadcast_arrays(x * 200 + 20, y * 200 + 20, (x + y) * 100 + 20), -1)
        img[top:top + len(y)] = np.clip(rgb + rng.normal(0, 1, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, quality=90)


def photo_jpeg(path: str) -> None:
    from PIL import Image
    from skimage import data as skdata

    Image.fromarray(skdata.astronaut()).resize((640, 480), Image.BICUBIC).save(path, quality=90)


CASES = {"photo-640x480": ("photo.jpg", photo_jpeg), "jpeg-10000x10000": ("huge.jpg", huge_jpeg),
         "png-bomb-60000x60000": ("bomb.png", bomb_png)}


# ---------------------------------------------------------------------------------------------- measuring
def run_explain(tree: str, image: str, out: str) -> dict:
    """One fresh ``jaxcam explain IMAGE --out OUT`` process with ``tree`` first on the path: its exit status, wall
    time, peak RSS and the last line it wrote to stderr."""
    env = dict(os.environ, PYTHONPATH=tree, JAXCAM_COMPILATION_CACHE="off", TQDM_DISABLE="1",
               JAX_PLATFORMS="cpu")
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CLI, "explain", image, "--out", out], cwd=tree, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = [ln for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    said = [ln.strip() for ln in lines if "Error" in ln or "Warning" in ln or "error:" in ln] or lines
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "stderr_last": said[-1][:300] if said else "", "stderr_lines": len(lines)}


def measure(tree: str, inputs: dict, work: str, label: str) -> dict:
    out = {}
    for case, path in inputs.items():
        result = run_explain(tree, path, os.path.join(work, f"out-{label}-{case}"))
        print(f"{label:6s} {case:22s} rc={result['rc']} {result['wall_s']:7.1f} s {result['peak_rss_mib']:7d} MiB  "
              f"{result['stderr_last'][:90]}", flush=True)
        out[case] = result
    return out


def git_head(tree: str) -> str:
    try:
        return subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


# ------------------------------------------------------------------------------------------------ writing
def markdown(runs: dict, sizes: dict, trees: dict) -> str:
    labels = list(runs)
    head = "| case | file | " + " | ".join(f"{lb}: exit, peak RSS, wall" for lb in labels) + " |"
    rows = [head, "|" + "---|" * (2 + len(labels))]
    for case in sizes:
        cells = [f"{r[case]['rc']}, {r[case]['peak_rss_mib']:,} MiB, {r[case]['wall_s']} s"
                 for r in runs.values()]
        rows.append(f"| {case} | {sizes[case]:,} bytes | " + " | ".join(cells) + " |")
    said = [f"- {lb} / {case}: `{runs[lb][case]['stderr_last']}` ({runs[lb][case]['stderr_lines']} stderr lines)"
            for lb in labels for case in sizes if runs[lb][case]["stderr_lines"]]
    trees_line = ", ".join(f"{lb} = {trees[lb]}" for lb in labels)
    return "\n".join([
        "# Untrusted images: `jaxcam explain IMAGE --out DIR`, peak memory and wall time (CPU)", "",
        f"One fresh process per cell, default embedded model (EfficientNet-Lite0, 224 px input), compilation cache "
        f"off (every run compiles), peak RSS = the child's ru_maxrss. Commits: {trees_line}. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (wall times are noisy; memory is not).",
        "", *rows, "", "What each run that wrote to stderr said (its last error or warning line):", "", *said, "",
        "Reproduce: `python benchmarks/untrusted_images.py --before <clean clone of the older commit> --after <clean "
        "clone of the newer one>`.", ""])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", metavar="TREE", help="also run the cases against this source tree (PYTHONPATH)")
    p.add_argument("--after", metavar="TREE", default=ROOT,
                   help="the source tree measured as 'after' (default: this checkout, uncommitted edits included)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--results", default=RESULTS, help="output path without extension (.md and .json)")
    p.add_argument("--make", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)  # write one input, exit
    args = p.parse_args(argv)
    if args.make:
        CASES[args.make[0]][1](args.make[1])
        return
    work = tempfile.mkdtemp(prefix="jaxcam-untrusted-")
    try:
        inputs, sizes = {}, {}
        for case in args.cases:
            inputs[case] = os.path.join(work, CASES[case][0])
            subprocess.run([sys.executable, os.path.abspath(__file__), "--make", case, inputs[case]], check=True)
            sizes[case] = os.path.getsize(inputs[case])
        runs, trees = {}, {}
        if args.before:
            runs["before"], trees["before"] = measure(args.before, inputs, work, "before"), git_head(args.before)
        runs["after"], trees["after"] = measure(args.after, inputs, work, "after"), git_head(args.after)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results + ".json", "w") as f:
        json.dump({"runs": runs, "sizes": sizes, "trees": trees}, f, indent=1)
    with open(args.results + ".md", "w") as f:
        f.write(markdown(runs, sizes, trees))
    print(f"wrote {args.results}.md")


if __name__ == "__main__":
    main()
