"""A real multi-process run on JAX's distributed runtime, on one machine: n local processes, each with D CPU devices,
joined by ``jax.distributed.initialize`` (a coordinator on localhost, gloo CPU collectives) into one global set of
n x D devices.

    python scripts/distributed_run.py --processes 2 --devices-per-process 2 --out runs/dist2 [robustness|explain|all]
    python scripts/distributed_run.py --processes 1 --devices-per-process 1 --out runs/dist1
    python scripts/distributed_run.py --compare runs/dist2 runs/dist1      # rows and maps against one process

Each worker (this file with ``--worker``) calls ``jax.distributed.initialize(coordinator_address="localhost:PORT",
num_processes=n, process_id=i)`` and then

- robustness: :func:`jaxcam.robustness.run` on a small fixed setting (a randomly initialised
  :func:`jaxcam.reference_model` at 32x32, 8 images drawn from a fixed seed) into ``OUT/robustness``, shared by all
  processes: process i takes every n-th image, shards its chunks over its own D devices and writes its own parts and
  manifest; a barrier, then process 0 reads every process's rows and writes ``OUT/robustness/rows.csv``.
- explain: one global batch of 8 images sharded over a mesh of all n x D devices
  (``jax.make_array_from_process_local_data``: each process builds only the rows its devices hold), one jitted
  :func:`jaxcam.explain` over that global array, the maps gathered to every process with
  ``multihost_utils.process_allgather`` and saved by process 0 as ``OUT/explain/maps.npz``.

The launcher gives each worker ``JAX_PLATFORMS=cpu``, ``XLA_FLAGS=--xla_force_host_platform_device_count=D`` and a
free localhost port for the coordinator, writes each worker's output to ``OUT/logs/worker-<i>.log``, and stops the
whole group as soon as one worker fails (a process of a distributed group cannot go on without its peers).
``--kill-after-parts K`` SIGKILLs worker ``--kill-worker`` once K robustness parts exist (then the group is
stopped); starting the same command again with the same ``--out`` resumes: only missing parts are computed, and
the rows equal an uninterrupted run's (``--compare`` checks it). Exit status: 0 done, 1 a worker failed or was
killed, 2 bad arguments, 3 ``--compare`` found a difference.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("robustness", "explain", "all")
# the fixed workload: every process count must compute the same rows and maps
ROBUSTNESS = dict(methods=("gradcam", "eigencam"), noises=("gaussian", "impulse"), severities=(1, 3), draws=2,
                  image_batch=2, chunk=8, size=32, key=0, dataset="random8", progress=False)
EXPLAIN_METHODS = ("gradcam", "gradcam++", "layercam")
IMAGES = 8  # robustness images and explain's global batch (a multiple of every device count used here: 1, 2, 4, 8)
DATA_SEED = 17  # numpy seed of the images (the same in every process)


@functools.lru_cache(maxsize=1)
def _model():
    import jaxcam

    return jaxcam.reference_model(0, size=32, widths=(4, 8, 8))


def _images():
    """IMAGES pixel images (N, 32, 32, 3) in [0, 1] from a fixed seed, and their ids."""
    import numpy as np

    pixels = np.random.default_rng(DATA_SEED).random((IMAGES, 32, 32, 3)).astype(np.float32)
    return pixels, [f"img{i}" for i in range(IMAGES)]


def _barrier(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_robustness(out: str) -> int:
    """This process's share of the robustness grid into ``out/robustness`` (resumable); process 0 writes rows.csv once
    every process has finished. Returns the number of rows."""
    import jax

    import jaxcam
    from jaxcam.datasets import array_source

    pixels, ids = _images()
    run_dir = os.path.join(out, "robustness")
    # resume=True: a restarted group continues; process (index, count) comes from jax.distributed
    jaxcam.robustness.run(_model(), array_source(pixels, ids=ids, name="random8"), run_dir, **ROBUSTNESS,
                          resume=True)
    _barrier("jaxcam robustness done")
    rows = jaxcam.robustness.read(run_dir)
    if jax.process_index() == 0:
        rows.to_csv(os.path.join(run_dir, "rows.csv"))
    return len(rows)


def run_explain(out: str) -> dict:
    """Explain one global batch sharded over every process's devices; process 0 saves the gathered maps."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import jaxcam

    model = _model()
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    if IMAGES % len(jax.devices()):
        raise jaxcam.InvalidArgumentError(f"the global batch of {IMAGES} images does not divide over "
                                          f"{len(jax.devices())} devices; use a device count that divides it")
    # the rows this process's devices hold (contiguous for a 1-D mesh over jax.devices()): it builds only those
    rows = sorted(idx[0].indices(IMAGES)[:2] for idx in
                  sharding.addressable_devices_indices_map((IMAGES, 32, 32, 3)).values())
    start, stop = rows[0][0], rows[-1][1]
    if sum(b - a for a, b in rows) != stop - start:
        raise jaxcam.InvalidArgumentError(f"process {jax.process_index()}'s devices hold rows {rows}, not one contiguous range; "
                                "make_array_from_process_local_data needs one")
    pixels, _ = _images()  # (a real host would decode only its own rows)
    local = (pixels[start:stop] - np.asarray(model.mean, np.float32)) / np.asarray(model.std, np.float32)
    x = jax.make_array_from_process_local_data(sharding, local, (IMAGES, 32, 32, 3))
    maps, logits, classes = jaxcam.explain(model, x, list(EXPLAIN_METHODS), preprocessed=True, return_logits=True)
    devices = {name: len(m.sharding.device_set) for name, m in maps.items()}
    gathered = {name: np.asarray(multihost_utils.process_allgather(m, tiled=True)) for name, m in maps.items()}
    gathered["logits"] = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
    gathered["classes"] = np.asarray(multihost_utils.process_allgather(classes, tiled=True))
    if jax.process_index() == 0:
        os.makedirs(os.path.join(out, "explain"), exist_ok=True)
        path = os.path.join(out, "explain", "maps.npz")
        np.savez(path + ".tmp.npz", **gathered)
        os.replace(path + ".tmp.npz", path)
    return {"rows": [start, stop], "devices_per_map": devices}


def worker(args) -> None:
    import jax

    t0 = time.time()
    if args.processes > 1:
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.processes,
                                   process_id=args.process_id)
    info = {"process": jax.process_index(), "processes": jax.process_count(), "devices": len(jax.devices()),
            "local_devices": len(jax.local_devices()), "init_s": round(time.time() - t0, 2)}
    want = (args.devices_per_process, args.processes * args.devices_per_process)
    if (info["local_devices"], info["devices"]) != want:
        raise RuntimeError(f"expected {want[0]} local devices and {want[1]} in all, got {info} (is XLA_FLAGS "
                           "--xla_force_host_platform_device_count set for this worker?)")
    if args.task in ("robustness", "all"):
        t = time.time()
        info["robustness_rows"] = run_robustness(args.out)
        info["robustness_s"] = round(time.time() - t, 2)
    if args.task in ("explain", "all"):
        t = time.time()
        info.update(run_explain(args.out))
        info["explain_s"] = round(time.time() - t, 2)
    info["total_s"] = round(time.time() - t0, 2)
    print("WORKER " + json.dumps(info), flush=True)


# ------------------------------------------------------------------------------------------------- the launcher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _parts(out: str) -> int:
    parts = os.path.join(out, "robustness", "parts")
    return sum(f.endswith(".parquet") for f in os.listdir(parts)) if os.path.isdir(parts) else 0


def launch(processes: int, devices: int, out: str, task: str = "all", *, timeout: float = 900,
           kill_after_parts: int | None = None, kill_worker: int = 0, port: int | None = None) -> dict:
    """Start the worker group and wait for it. Returns ``{"ok", "wall_s", "killed", "returncodes", "parts_before",
    "parts_after", "workers": [each worker's timings and devices, or None]}``; a failed worker (or the timeout)
    stops the whole group."""
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    port = port or free_port()
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    procs, logs = [], []
    parts_before = _parts(out)
    t0 = time.time()
    for i in range(processes):
        log = open(os.path.join(out, "logs", f"worker-{i}.log"), "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--process-id", str(i), "--processes",
             str(processes), "--devices-per-process", str(devices), "--coordinator", f"localhost:{port}",
             "--out", out, task], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    killed = None
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.time() - t0 > timeout:
                break  # one failed (its peers would wait for it): stop the group
            if kill_after_parts is not None and killed is None and _parts(out) >= kill_after_parts:
                procs[kill_worker].send_signal(signal.SIGKILL)
                killed = kill_worker
                procs[kill_worker].wait()
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        for log in logs:
            log.close()
    workers = []
    for i in range(processes):
        with open(os.path.join(out, "logs", f"worker-{i}.log")) as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith("WORKER ")]
        workers.append(json.loads(lines[-1][7:]) if lines else None)
    codes = [p.returncode for p in procs]
    return {"ok": killed is None and all(c == 0 for c in codes), "wall_s": round(time.time() - t0, 2),
            "killed": killed, "returncodes": codes, "parts_before": parts_before, "parts_after": _parts(out),
            "workers": workers}


def compare(out: str, reference: str, tasks=("robustness", "explain")) -> dict:
    """Rows of ``out/robustness`` and maps of ``out/explain`` against ``reference``'s: counts of differing entries
    (exact equality) and the largest absolute difference of every float column and map."""
    import numpy as np

    from jaxcam import robustness as R

    result = {}
    a, b = R.read(os.path.join(out, "robustness")), R.read(os.path.join(reference, "robustness"))
    if "robustness" in tasks and (len(a) or len(b)):
        result["rows"] = [len(a), len(b)]
        result["digest_equal"] = R.run_digest(a) == R.run_digest(b)
        if len(a) == len(b):
            diff = {}
            for c in R.COLUMNS:
                x, y = np.asarray(a[c]), np.asarray(b[c])
                if x.dtype.kind == "f" or y.dtype.kind == "f":
                    diff[c] = float(np.abs(x.astype(float) - y.astype(float)).max())
                else:
                    diff[c] = int((x.astype(str) != y.astype(str)).sum())
            result["row_diff"] = diff
    pa, pb = os.path.join(out, "explain", "maps.npz"), os.path.join(reference, "explain", "maps.npz")
    if "explain" not in tasks:
        pass
    elif os.path.exists(pa) and os.path.exists(pb):
        ma, mb = np.load(pa), np.load(pb)
        result["maps_diff"] = {k: float(np.abs(ma[k].astype(float) - mb[k].astype(float)).max())
                               if k in ma.files and ma[k].shape == mb[k].shape else "missing or other shape"
                               for k in sorted(set(ma.files) | set(mb.files))}
    elif os.path.exists(pa) or os.path.exists(pb):
        result["maps_diff"] = {"maps.npz": f"only in {out if os.path.exists(pa) else reference}"}
    result["identical"] = (("rows" in result or "maps_diff" in result) and result.get("digest_equal", True)
                           and all(v == 0 for v in result.get("maps_diff", {}).values()))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", nargs="?", choices=TASKS, default="all")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=2)
    p.add_argument("--out", help="the run directory, shared by every process")
    p.add_argument("--timeout", type=float, default=900, help="seconds before the whole group is stopped")
    p.add_argument("--port", type=int, help="the coordinator's localhost port (default: a free one)")
    p.add_argument("--kill-after-parts", type=int, help="SIGKILL --kill-worker once this many robustness parts exist")
    p.add_argument("--kill-worker", type=int, default=0)
    p.add_argument("--compare", nargs=2, metavar=("OUT", "REFERENCE"),
                   help="compare two finished runs' rows and maps (no workers are started)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--coordinator", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compare:
        result = compare(*args.compare)
        print(json.dumps(result, indent=1))
        return 0 if result["identical"] else 3
    if not args.out:
        p.error("--out is required")
    if args.processes < 1 or args.devices_per_process < 1:
        p.error("--processes and --devices-per-process must be at least 1")
    if IMAGES % (args.processes * args.devices_per_process):
        p.error(f"processes x devices-per-process must divide the {IMAGES} images of the global batch")
    if args.kill_after_parts is not None and not 0 <= args.kill_worker < args.processes:
        p.error(f"--kill-worker must be in 0..{args.processes - 1}")
    if args.worker:
        worker(args)
        return 0
    result = launch(args.processes, args.devices_per_process, args.out, args.task, timeout=args.timeout,
                    kill_after_parts=args.kill_after_parts, kill_worker=args.kill_worker, port=args.port)
    print(json.dumps(result, indent=1))
    if not result["ok"]:
        print(f"the group did not finish (see {os.path.join(args.out, 'logs')}); run the same command again to "
              "resume", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
