"""CAM-loss and ReCAM against plain cross-entropy on the synthetic localisation benchmark.

    python scripts/camloss_recam.py            # 3 seeds x {clutter, clutter + spurious cue}: ~13 min on 2 CPU cores
    python scripts/camloss_recam.py --quick    # a smoke run (< 1 min of training)
    python scripts/camloss_recam.py --dataset tfds:imagenette/160px-v2 --size 128 --widths 64 128 256 \\
        --phase1-steps 15000 --phase2-steps 5000 --batch-size 128   # an accelerator run: accuracy only (no masks)

Per seed and setting, the ReferenceCNN is trained three ways with the same optimiser (adam), batch and number of
updates ``phase1 + phase2``:

- **CE**: cross-entropy for ``phase1`` steps (the converged model ReCAM starts from), then ``phase2`` more steps of
  cross-entropy at a tenth of the rate (the control for ReCAM's fine-tuning);
- **CAM-loss**: ``CE + alpha * L_CAM`` from scratch for ``phase1 + phase2`` steps (as the paper trains);
- **ReCAM**: the same phase-1 CE model, then ``phase2`` steps of ``BCE + lam * SCE`` with a new classifier ``W'``
  (the backbone and ``W`` at a tenth of ``W'``'s rate, as the authors' code).

Each model is scored on the test split (the spurious cue, where planted, is independent of the label there):
accuracy, and for Grad-CAM and CAM of the true class at ``stage3`` the pointing game and the IoU at the best of 19
thresholds against the object masks; ReCAM also with its own map (``relu(sum_c W'_cy W_cy A_c)``, through
:func:`jaxcam.train.camloss.recam_model`). With the cue on, also the accuracy on held-out *training-distribution*
images (where the cue predicts the label) and how often Grad-CAM's maximum falls on the cue there. Means with 95 %
Student-t intervals over seeds, and each method's paired difference from CE per seed. Writes
``camloss_recam.{md,csv,png}`` into ``--out`` (default scripts/results/).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optax

import jaxcam
from jaxcam.synthetic import synthetic_arrays
from jaxcam.table import Table
from jaxcam.train import fit
from jaxcam.train.assess import (experiment_data, experiment_parser, localisation, mean_interval,
                                 predict_accuracy)
from jaxcam.train.camloss import RECAM_HEAD, recam_model, with_recam_head

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("CE", "CAM-loss", "ReCAM")
MAPS = {"gradcam": "Grad-CAM", "cam": "CAM", "recam": "ReCAM map"}
METRICS = ("accuracy", "pointing_game", "iou_best", "flat_maps", "accuracy_iid", "cue_pointing")


def parse(argv=None):
    p = experiment_parser(__doc__.splitlines()[0], ROOT / "scripts" / "results")
    p.add_argument("--phase1-steps", type=int, default=300, help="CE steps before ReCAM's fine-tuning")
    p.add_argument("--phase2-steps", type=int, default=100, help="ReCAM's (and CE's control) fine-tuning steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--alpha", type=float, default=1.0, help="CAM-loss weight")
    p.add_argument("--lam", type=float, default=1.0, help="ReCAM's SCE weight (the authors' default)")
    p.add_argument("--settings", nargs="+", default=["clutter", "spurious"], choices=["clutter", "spurious"])
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.phase1_steps, a.phase2_steps, a.train_images, a.test_images = 1, 20, 10, 256, 32
        a.settings = ["spurious"]  # the setting that runs every code path (compiles dominate a smoke run)
    if a.dataset != "synthetic":
        a.settings = [a.dataset]
    return a


def data(args, setting, seed):
    """(train, test, iid): iid holds training-distribution images (cue predictive) for the spurious setting."""
    extra = {"spurious": setting == "spurious"} if args.dataset == "synthetic" else {}
    train, test = experiment_data(args.dataset, seed, train_images=args.train_images, test_images=args.test_images,
                                  size=args.size, num_classes=args.classes, test_split=args.test_split, **extra)
    iid = None
    if setting == "spurious":
        iid = synthetic_arrays(seed + 1000, args.test_images, size=args.size, num_classes=args.classes,
                               spurious=True)
    return train, test, iid


def recam_optimizer(lr: float):
    """Adam with the authors' learning-rate split: W' at ``lr``, everything else at ``lr / 10``."""
    def labels(params):
        return {k: ({h: _tag(v, "head" if h == RECAM_HEAD else "base") for h, v in v.items()} if k == "params"
                    else _tag(v, "base")) for k, v in params.items()}

    return optax.multi_transform({"base": optax.adam(lr / 10), "head": optax.adam(lr)}, labels)


def _tag(tree, name):
    import jax

    return jax.tree.map(lambda _: name, tree)


def train_three(args, train, seed):
    """{"CE": model, "CAM-loss": model, "ReCAM": model} and the seconds each took."""
    common = dict(batch_size=args.batch_size, progress=False)
    base = jaxcam.reference_model(seed, num_classes=args.classes, size=args.size, widths=args.widths)
    seconds = {}
    t = time.perf_counter()
    phase1 = fit(base, train, steps=args.phase1_steps, learning_rate=args.learning_rate, key=seed, **common).model
    p1 = time.perf_counter() - t
    t = time.perf_counter()
    ce = fit(phase1, train, steps=args.phase2_steps, learning_rate=args.learning_rate / 10, key=seed + 1,
             **common).model
    seconds["CE"] = p1 + time.perf_counter() - t
    t = time.perf_counter()
    recam = fit(with_recam_head(phase1, seed), train, steps=args.phase2_steps, loss="recam",
                loss_options={"lam": args.lam, "base": "bce"}, optimizer=recam_optimizer(args.learning_rate),
                key=seed + 1, **common).model
    seconds["ReCAM"] = p1 + time.perf_counter() - t
    t = time.perf_counter()
    camloss = fit(base, train, steps=args.phase1_steps + args.phase2_steps, loss="cam_loss",
                  loss_options={"alpha": args.alpha}, learning_rate=args.learning_rate, key=seed, **common).model
    seconds["CAM-loss"] = time.perf_counter() - t
    return {"CE": ce, "CAM-loss": camloss, "ReCAM": recam}, seconds


def assess(models, test, iid):
    """Rows (one per model and map) and the maps of the first images, for the figure."""
    rows, examples = [], {}
    for name, model in models.items():
        acc = predict_accuracy(model, test["image"], test["label"])
        base = {"model": name, "accuracy": acc}
        if iid is not None:
            base["accuracy_iid"] = predict_accuracy(model, iid["image"], iid["label"])
        if "mask" not in test:
            rows.append({**base, "map": "-"})
            continue
        scores = localisation(model, test["image"], test["mask"], test["label"], ("gradcam", "cam"))
        if name == "ReCAM":
            scores["recam"] = localisation(recam_model(model), test["image"], test["mask"], test["label"],
                                           ("cam",))["cam"]
        cue = None
        if iid is not None:
            cue = localisation(model, iid["image"], iid["cue"], iid["label"], ("gradcam",))["gradcam"]["pointing_game"]
        for m, r in scores.items():
            flat = float(np.mean(np.ptp(r["maps"].reshape(len(r["maps"]), -1), axis=1) == 0))
            row = {**base, "map": MAPS[m], "pointing_game": r["pointing_game"], "iou_best": r["iou_best"],
                   "flat_maps": flat}
            if cue is not None:
                row["cue_pointing"] = cue if m == "gradcam" else float("nan")
            rows.append(row)
            examples[(name, MAPS[m])] = r["maps"][:4]
    return rows, examples


def summarise(rows):
    """Means with 95 % intervals per (setting, model, map), and paired differences from CE per seed."""
    keys = list(dict.fromkeys((r["setting"], r["model"], r["map"]) for r in rows))
    summary, diffs = [], []
    for setting, model, m in keys:
        sel = [r for r in rows if (r["setting"], r["model"], r["map"]) == (setting, model, m)]
        row = {"setting": setting, "model": model, "map": m, "seeds": len(sel)}
        for col in METRICS:
            vals = [r.get(col, float("nan")) for r in sel]
            if np.all(np.isfinite(vals)):
                mean, half = mean_interval(vals)
                row[col] = f"{mean:.3f} ± {half:.3f}"
            else:
                row[col] = ""
        summary.append(row)
        if model == "CE":
            continue
        ref_map = m if m != "ReCAM map" else "Grad-CAM"
        for col in ("accuracy", "pointing_game", "iou_best"):
            if col == "accuracy" and m not in ("Grad-CAM", "-"):
                continue  # one accuracy per model: reported with its Grad-CAM row
            ref = {r["seed"]: r.get(col) for r in rows
                   if (r["setting"], r["model"], r["map"]) == (setting, "CE", ref_map)}
            d = [r[col] - ref[r["seed"]] for r in sel if col in r and ref.get(r["seed"]) is not None]
            if d and np.all(np.isfinite(d)):
                mean, half = mean_interval(d)
                verdict = ("one seed: no interval" if len(d) < 2 else "higher" if mean - half > 0
                           else "lower" if mean + half < 0 else "no clear difference")
                diffs.append({"setting": setting, "comparison": f"{model} {m} - CE {ref_map}", "metric": col,
                              "difference": f"{mean:+.3f} ± {half:.3f}", "verdict": verdict})
    return Table.from_rows(summary), Table.from_rows(diffs)


def main(argv=None):
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, figure, start = [], {}, time.perf_counter()
    for setting in args.settings:
        for seed in range(args.seeds):
            train, test, iid = data(args, setting, seed)
            models, seconds = train_three(args, train, seed)
            got, examples = assess(models, test, iid)
            for r in got:
                rows.append({"setting": setting, "seed": seed, **r, "train_seconds": seconds[r["model"]]})
            if seed == 0 and "mask" in test:
                figure[setting] = (test, examples)
            print(f"{setting} seed {seed}: " + ", ".join(
                f"{r['model']} {r['map']} acc {r['accuracy']:.3f} pg {r.get('pointing_game', float('nan')):.3f}"
                for r in got), flush=True)
    table, diffs = summarise(rows)
    Table.from_rows(rows).to_csv(args.out / "camloss_recam.csv")
    total = time.perf_counter() - start
    cmd = "python scripts/camloss_recam.py" + (" --quick" if args.quick else "")
    md = ["# CAM-loss and ReCAM vs cross-entropy on the synthetic localisation benchmark", "",
          f"`{cmd}`: {args.seeds} seed(s) per setting; ReferenceCNN widths {args.widths}, {args.classes} classes, "
          f"{args.size} px, {args.train_images} training / {args.test_images} test images; adam, batch "
          f"{args.batch_size}, {args.phase1_steps} + {args.phase2_steps} steps for every model (CE: lr "
          f"{args.learning_rate} then {args.learning_rate / 10:g}; CAM-loss alpha {args.alpha} at lr "
          f"{args.learning_rate}; ReCAM: the phase-1 CE model, then BCE + {args.lam} SCE, backbone and W at "
          f"{args.learning_rate / 10:g}, W' at {args.learning_rate}). {total:.0f} s in all (dataset "
          f"{args.dataset}).", "",
          "Maps explain the true class at `stage3`; pointing game without tolerance; IoU at the best of 19 "
          "thresholds; `flat_maps`: the share of constant maps (the pointing game counts those as hits); "
          "`accuracy_iid` and `cue_pointing` (Grad-CAM's maximum on the planted cue) on held-out "
          "images of the *training* distribution, where the cue predicts the label. Means with 95 % Student-t "
          "intervals over seeds.", "", table.to_markdown(), "",
          "Paired differences from CE per seed (95 % Student-t interval of the mean difference; ReCAM's map is "
          "compared with CE's Grad-CAM):", "", diffs.to_markdown() if len(diffs) else "(one seed: none)", ""]
    (args.out / "camloss_recam.md").write_text("\n".join(md))
    plot(rows, figure, args.out / "camloss_recam.png")
    print("\n".join(md))


def plot(rows, figure, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    has_maps = any("pointing_game" in r for r in rows)
    cols = ("accuracy", "pointing_game", "iou_best") if has_maps else ("accuracy",)
    n_ex = 2 if figure else 0
    shown = [("CE", "Grad-CAM"), ("CAM-loss", "Grad-CAM"), ("ReCAM", "Grad-CAM"), ("ReCAM", "ReCAM map")]
    nrows = 1 + n_ex * len(figure)
    fig = plt.figure(figsize=(3.2 * max(len(cols), 1) * len(settings) * 0.9 + 1, 3.2 + 2.0 * (nrows - 1)))
    grid = fig.add_gridspec(nrows, len(cols) * len(settings), height_ratios=[1.6] + [1.0] * (nrows - 1))
    bars = [(m, mp) for m in MODELS for mp in MAPS.values()
            if any(r["model"] == m and r["map"] == mp for r in rows)] or [(m, "-") for m in MODELS]
    for si, setting in enumerate(settings):
        for ci, col in enumerate(cols):
            ax = fig.add_subplot(grid[0, si * len(cols) + ci])
            vals = [[r[col] for r in rows if r["setting"] == setting and (r["model"], r["map"]) == b and col in r]
                    for b in bars]
            keep = [i for i, v in enumerate(vals) if v and np.all(np.isfinite(v))]
            means = [np.mean(vals[i]) for i in keep]
            halves = [mean_interval(vals[i])[1] for i in keep]
            colours = [f"C{MODELS.index(bars[i][0])}" for i in keep]
            ax.bar(range(len(keep)), means, yerr=halves, capsize=3, color=colours)
            ax.set_xticks(range(len(keep)), [f"{bars[i][0]}\n{bars[i][1]}" for i in keep], fontsize=6, rotation=45,
                          ha="right")
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{setting}: {col.replace('_', ' ')}", fontsize=8)
    r0 = 1
    for setting, (test, examples) in figure.items():
        for i in range(n_ex):
            panels = [("image", test["image"][i]), ("mask", test["mask"][i])] + [
                (f"{m}\n{mp}", examples[(m, mp)][i]) for m, mp in shown if (m, mp) in examples]
            sub = grid[r0, :].subgridspec(1, len(panels))
            for j, (title, img) in enumerate(panels):
                ax = fig.add_subplot(sub[0, j])
                if img.ndim == 2 and title not in ("mask",):
                    ax.imshow(test["image"][i])
                    ax.imshow(img, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                else:
                    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
                ax.set_title(f"{setting} {title}" if j == 0 else title, fontsize=7)
                ax.axis("off")
            r0 += 1
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
