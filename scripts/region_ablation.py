"""CAM region ablation on the synthetic benchmark with and without the spurious cue (issue 16).

    python scripts/region_ablation.py            # 3 seeds, 48 px
    python scripts/region_ablation.py --quick    # a smoke run (< 1 min of training)
    python scripts/region_ablation.py --decoy-shapes 0.5   # the cue model's training images: half have a decoy shape

Per seed two ReferenceCNNs are trained with cross-entropy through ``jaxcam.train.fit`` (no flip augmentation, which
would move the top-left cue): the *clean* model on the benchmark without the cue, the *cue* model on the benchmark
whose training split plants the label-coloured cue (with ``--decoy-shapes F`` a fraction F of those training images
draw their object with a random class's shape, so only the cue gives their label: the cue becomes the signal the
model should rely on; ``jaxcam.synthetic``'s ``decoy_shapes``). Both are scored on the same images carrying a cue
(``--eval-split train``: a fresh draw whose cue agrees with the label, so a model that learned the shortcut can
use it; ``test``: its colour independent of the label). For each image the Grad-CAM of the *predicted* class (what
the model used) at ``stage3`` is cut into regions (``jaxcam.regions.cam_regions``, threshold 0.5, at most 5), and
``jaxcam.metrics.region_ablation`` removes them (``--how``, default blur) together and one at a time, plus a
same-area random control. Reported per model, as means over seeds with 95 % Student-t intervals: accuracy; the
fraction of images where a CAM region touches the cue; the fraction where the region whose removal lowers the
predicted class most is the cue's region ("cue ranks first"); the change of the predicted class's probability under
CAM and random ablation, and when the cue patch itself is removed (the ground truth the ranking is checked
against: a model that barely loses anything without the cue has no reason to rank it first). Writes
``region_ablation.{md,csv,png}`` into ``--out`` (default scripts/results/).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import jaxcam
from jaxcam.metrics import region_ablation
from jaxcam.synthetic import synthetic_arrays
from jaxcam.table import Table
from jaxcam.train import fit
from jaxcam.train.assess import experiment_parser, mean_interval, predict_accuracy

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("accuracy", "cue_change", "cue_touched", "cue_first", "cam_change", "random_change", "area_fraction")


def parse(argv=None):
    p = experiment_parser(__doc__.splitlines()[0], ROOT / "scripts" / "results")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--how", default="blur", choices=("blur", "mean", "noise", "inpaint"))
    p.add_argument("--eval-split", default="train", choices=("train", "test"))
    p.add_argument("--decoy-shapes", type=float, default=0.0, metavar="F",
                   help="fraction of the cue model's training images drawn with a random class's shape (default 0)")
    a = p.parse_args(argv)
    if a.dataset != "synthetic":
        p.error("region_ablation needs the synthetic benchmark (--dataset synthetic): it scores against the cue")
    if a.quick:
        a.seeds, a.steps, a.train_images, a.test_images = 1, 80, 512, 32
    return a


def cue_scores(result, cue):
    """(cue touched, cue ranks first) per image: the cue's region is the one overlapping the cue most."""
    touched, first = [], []
    for rg, top, c in zip(result.regions, result.top_region, cue):
        overlap = np.bincount(rg.labels[c], minlength=rg.count + 1)[1:]
        touched.append(overlap.max() > 0)
        first.append(overlap.max() > 0 and int(np.argmax(overlap)) + 1 == int(top))
    return np.asarray(touched, float), np.asarray(first, float)


def run_seed(args, seed):
    kw = dict(size=args.size, num_classes=args.classes)
    # evaluation images: a draw disjoint from training (another key), every image carrying a cue
    evals = synthetic_arrays(10_000 + seed, args.test_images, spurious=True, split=args.eval_split, **kw)
    rows = []
    for name, spurious in (("clean", False), ("cue", True)):
        decoys = {"decoy_shapes": args.decoy_shapes} if spurious and args.decoy_shapes else {}
        train = synthetic_arrays(seed, args.train_images, spurious=spurious, **decoys, **kw)
        model = jaxcam.reference_model(seed, num_classes=args.classes, size=args.size, widths=tuple(args.widths))
        model = fit(model, {"image": train["image"], "label": train["label"]}, steps=args.steps,
                    batch_size=args.batch_size, learning_rate=args.learning_rate, augment=(), key=seed,
                    progress=False).model
        x = evals["image"]
        pred = np.asarray(model.predict(x, k=1).classes)[:, 0]
        cams = np.asarray(jaxcam.explain(model, x, "gradcam", targets=pred.tolist()))
        res = region_ablation(model, x, cams, pred, key=seed, how=args.how, threshold=0.5, max_regions=5)
        touched, first = cue_scores(res, evals["cue"])
        # ground truth for the ranking: how much the model loses when the cue itself is removed
        cue = region_ablation(model, x, evals["cue"].astype(np.float32), pred, key=seed, how=args.how, max_regions=1)
        rows.append({"seed": seed, "model": name, "accuracy": predict_accuracy(model, x, evals["label"]),
                     "cue_change": float(cue.explained_change.mean()), "cue_touched": touched.mean(),
                     "cue_first": first.mean(),
                     "cam_change": float(res.explained_change.mean()),
                     "random_change": float(res.control_explained_change.mean()),
                     "area_fraction": float(res.area_fraction.mean())})
        print(rows[-1], flush=True)
    return rows


def summarise(rows):
    out = []
    for name in ("clean", "cue"):
        sel = [r for r in rows if r["model"] == name]
        row = {"model": name, "seeds": len(sel)}
        for m in METRICS:
            mean, half = mean_interval([r[m] for r in sel])
            row[m] = f"{mean:.3f} ± {half:.3f}"
        out.append(row)
    return out


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metrics, title in ((axes[0], ("cue_touched", "cue_first"), "the cue's region"),
                               (axes[1], ("cam_change", "random_change"), "predicted-class probability change")):
        xs = np.arange(len(metrics))
        for k, name in enumerate(("clean", "cue")):
            vals = [[r[m] for r in rows if r["model"] == name] for m in metrics]
            ax.bar(xs + (k - 0.5) * 0.4, [np.mean(v) for v in vals], 0.4, yerr=[mean_interval(v)[1] for v in vals],
                   label=name, capsize=3)
        ax.set_xticks(xs, metrics)
        ax.set_title(title)
        ax.axhline(0, color="k", lw=0.5)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = [r for seed in range(args.seeds) for r in run_seed(args, seed)]
    per_seed = Table.from_rows(rows)
    per_seed.to_csv(args.out / "region_ablation.csv")
    summary = Table.from_rows(summarise(rows))
    lines = ["# CAM region ablation: the spurious cue", "",
             f"`python scripts/region_ablation.py{' --quick' if args.quick else ''}"
             f"{f' --decoy-shapes {args.decoy_shapes:g}' if args.decoy_shapes else ''}`: {args.seeds} seed(s), "
             f"{args.size} px, {args.train_images} training images"
             f"{f' (the cue model: {args.decoy_shapes:.0%} of them with a decoy shape)' if args.decoy_shapes else ''}"
             f", {args.steps} steps, {args.test_images} "
             f"evaluation images (split `{args.eval_split}`, cue planted), ablation `{args.how}`, Grad-CAM of the "
             f"predicted class at stage3, regions at threshold 0.5 (at most 5); {time.time() - t0:.0f} s.", "",
             "Means over seeds with 95 % Student-t intervals. `cue_first`: the region whose removal lowers the "
             "predicted class most is the cue's; `cam_change` / `random_change` / `cue_change`: the predicted class's "
             "probability change when the CAM's regions / random blobs of the same area / the cue patch itself are "
             "removed (`cue_change` says how much the model relies on the cue at all).", "",
             summary.to_markdown(), "", "## Per seed", "", per_seed.to_markdown(), ""]
    (args.out / "region_ablation.md").write_text("\n".join(lines))
    plot(rows, args.out / "region_ablation.png")
    print(summary.to_markdown())


if __name__ == "__main__":
    main()
