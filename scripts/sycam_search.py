"""SyCAM on the synthetic localisation benchmark: search a CAM formula on one set of images, check it on another.

    python scripts/sycam_search.py                    # 3 seeds, 48 px, energy pointing game
    python scripts/sycam_search.py --quick            # a smoke run (< 2 min)
    python scripts/sycam_search.py --metric average_drop --dataset tfds:imagenette/160px-v2 --size 128 \\
        --widths 64 128 256 --steps 20000 --batch-size 128     # an accelerator run (no masks: a model metric)

Per seed a ReferenceCNN is trained with cross-entropy (``jaxcam.train.fit``). The test split is cut in two: the
first ``--search-images`` are the search set, the rest are held out. ``jaxcam.sycam.synthesize`` enumerates the
grammar (A, G, G2, G3, the Score-CAM term S, the Ablation term D, constants 0.5, 1, 2; relu, abs, norm, mean, sum,
max, softmax; + - * /) to ``--max-size`` nodes with observational-equivalence pruning, scores every candidate in
batches of ``--score-batch`` on ``--metric`` for the true class, and grows the ``--beam`` best for ``--rounds``. The
winner runs as the registered ``sycam`` method through ``jaxcam.evaluate`` on the held-out images beside Grad-CAM,
Grad-CAM++, Score-CAM (and XGrad-CAM, Ablation-CAM). Writes ``sycam_search.{md,csv,png}`` and the winners as
``sycam_search.json`` (one saved expression per seed) into ``--out`` (default scripts/results/), atomically.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import jaxcam
from jaxcam.evaluate import METRICS
from jaxcam.files import atomic_write
from jaxcam.sycam import Grammar, to_json
from jaxcam.sycam.search import held_out, synthesize
from jaxcam.table import Table
from jaxcam.train import fit
from jaxcam.train.assess import experiment_data, experiment_parser, mean_interval, predict_accuracy

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("gradcam", "gradcam++", "scorecam", "xgradcam", "ablationcam")


def parse(argv=None):
    p = experiment_parser(__doc__.splitlines()[0], ROOT / "scripts" / "results")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--metric", default="energy_pointing_game", choices=sorted(METRICS))
    p.add_argument("--search-images", type=int, default=64)
    p.add_argument("--max-size", type=int, default=4)
    p.add_argument("--beam", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--score-batch", type=int, default=64)
    p.add_argument("--terminals", nargs="+", default=["A", "G", "G2", "G3", "S", "D"])
    p.add_argument("--layer", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.steps, a.train_images, a.test_images, a.search_images = 1, 60, 512, 96, 32
        a.max_size, a.rounds = 3, 1
    if a.test_images <= a.search_images:
        p.error(f"--test-images ({a.test_images}) must exceed --search-images ({a.search_images}): the rest is "
                "the held-out set")
    return a


def main(argv=None):
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    grammar = Grammar(terminals=tuple(args.terminals))
    higher = METRICS[args.metric].higher_is_better
    needs_masks = METRICS[args.metric].needs == "masks"
    rows, winners, start = [], [], time.perf_counter()
    for seed in range(args.seeds):
        train, test = experiment_data(args.dataset, seed, train_images=args.train_images,
                                      test_images=args.test_images, size=args.size, num_classes=args.classes,
                                      test_split=args.test_split)
        if needs_masks and "mask" not in test:
            raise SystemExit(f"--metric {args.metric} needs masks, which {args.dataset} does not have; pick a "
                             "model metric (average_drop, road_combined, ...)")
        model = jaxcam.reference_model(seed, num_classes=args.classes, size=args.size, widths=args.widths)
        trained = fit(model, train, steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      key=seed, progress=False).model
        acc = predict_accuracy(trained, test["image"], test["label"])
        k = args.search_images
        search = {name: v[:k] for name, v in test.items()}
        hold = {name: v[k:] for name, v in test.items()}
        t0 = time.perf_counter()
        r = synthesize(trained, search["image"], metric=args.metric, masks=search.get("mask") if needs_masks else None,
                       labels=search["label"], layer=args.layer, grammar=grammar, max_size=args.max_size,
                       beam=args.beam, rounds=args.rounds, score_batch=args.score_batch, key=seed, progress=True)
        search_seconds = time.perf_counter() - t0
        print(r.summary(), flush=True)
        scores = held_out(trained, hold["image"], r.best, metric=args.metric,
                          masks=hold.get("mask") if needs_masks else None, labels=hold["label"], layer=args.layer,
                          methods=BASELINES, key=seed)
        winners.append({"seed": seed, "formula": str(r.best), "tree": to_json(r.best), "search_score": r.best_score,
                        "held_out": float(np.nanmean(scores["sycam"]))})
        base = {"seed": seed, "accuracy": acc, "search_seconds": search_seconds, "scored": r.scored,
                "enumerated": r.enumerated, "pruned": r.pruned, "candidates_per_second": r.candidates_per_second,
                "compile_seconds": r.compile_seconds}
        rows.append({**base, "method": "sycam", "formula": str(r.best), "search_score": r.best_score,
                     "held_out": float(np.nanmean(scores["sycam"]))})
        for m in BASELINES:
            rows.append({**base, "method": m, "formula": "", "search_score": r.known.get(m, float("nan")),
                         "held_out": float(np.nanmean(scores[m]))})
        print(f"seed {seed}: accuracy {acc:.3f}; held-out {args.metric}: "
              + ", ".join(f"{m} {float(np.nanmean(v)):.4f}" for m, v in scores.items()), flush=True)
    total = time.perf_counter() - start
    write(args, rows, winners, total, higher)


def write(args, rows, winners, total, higher):
    per_seed = Table.from_rows(rows)
    summary = []
    for m in ("sycam", *BASELINES):
        sel = [r for r in rows if r["method"] == m]
        row = {"method": m, "seeds": len(sel)}
        for col in ("search_score", "held_out"):
            mean, half = mean_interval([r[col] for r in sel])
            row[col] = f"{mean:.3f} ± {half:.3f}"
        summary.append(row)
    sy = [r for r in rows if r["method"] == "sycam"]
    gc = [r for r in rows if r["method"] == "gradcam"]
    sign = 1 if higher else -1
    beats_search = sum(sign * (a["search_score"] - b["search_score"]) >= -1e-9 for a, b in zip(sy, gc))
    beats_held = sum(sign * (a["held_out"] - b["held_out"]) > 0 for a, b in zip(sy, gc))
    paired = mean_interval([a["held_out"] - b["held_out"] for a, b in zip(sy, gc)]) if len(sy) > 1 else None
    cps = [r["candidates_per_second"] for r in sy]
    cmd = f"python scripts/sycam_search.py{' --quick' if args.quick else ''}"
    md = ["# SyCAM: a CAM formula searched on one image set, checked on another", "",
          f"`{cmd}`: {args.seeds} seed(s), {args.size} px, {args.steps} training steps, metric `{args.metric}` "
          f"({'higher' if higher else 'lower'} is better) of the true class; {args.search_images} search images, "
          f"{args.test_images - args.search_images} held-out images per seed; grammar terminals "
          f"{' '.join(args.terminals)}, exhaustive to {args.max_size} nodes, beam {args.beam} x {args.rounds} "
          f"round(s); {total:.0f} s in all (2 shared CPU cores).", "",
          "Means over seeds with 95 % Student-t intervals. `search_score`: on the search images (for the built-in "
          "CAMs: their expression in the grammar, scored by the same scorer); `held_out`: through `jaxcam.evaluate` "
          "on the held-out images (the winner as the registered `sycam` method).", "",
          Table.from_rows(summary).to_markdown(), "",
          f"- Search set: the winner scores at least as high as Grad-CAM's expression in {beats_search} of "
          f"{len(sy)} seed(s) (Grad-CAM's `mean(G)` is in the grammar, so it is always a candidate).",
          f"- Held out: the winner beats Grad-CAM in {beats_held} of {len(sy)} seed(s)"
          + (f"; paired difference (winner - Grad-CAM) {paired[0]:+.3f} ± {paired[1]:.3f} (95 % Student-t over "
             "seeds)." if paired else "."),
          f"- Candidates scored per second (vmapped batches of {args.score_batch}, compile excluded): "
          f"median {np.median(cps):.0f} (per seed: {', '.join(f'{c:.0f}' for c in cps)}); candidates scored per "
          f"seed: {', '.join(str(r['scored']) for r in sy)}.", "",
          "## Winners", "", "| seed | formula | search | held out |", "|---|---|---|---|"]
    md += [f"| {w['seed']} | `{w['formula']}` | {w['search_score']:.4f} | {w['held_out']:.4f} |" for w in winners]
    md += ["", "## Per seed", "", per_seed.to_markdown(), ""]
    atomic_write(args.out / "sycam_search.csv", per_seed.to_csv())
    atomic_write(args.out / "sycam_search.json", json.dumps({"format": "jaxcam.sycam.runs/1", "metric": args.metric,
                                                              "winners": winners}, indent=2) + "\n")
    plot(rows, args.out / "sycam_search.png", args.metric)
    atomic_write(args.out / "sycam_search.md", "\n".join(md))
    print("\n".join(md))


def plot(rows, path: Path, metric: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, col in zip(axes, ("search_score", "held_out")):
        vals = [[r[col] for r in rows if r["method"] == m] for m in methods]
        means = [np.mean(v) for v in vals]
        halves = [mean_interval(v)[1] if len(v) > 1 else 0.0 for v in vals]
        ax.bar(range(len(methods)), means, yerr=halves, capsize=3,
               color=["tab:red" if m == "sycam" else "tab:blue" for m in methods])
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(f"{metric}: {col.replace('_', ' ')}")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    main()
