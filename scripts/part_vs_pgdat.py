"""PART vs PGD-AT on the synthetic localisation benchmark (issue 16; PART: Zhang et al., ICML 2024).

    python scripts/part_vs_pgdat.py            # 3 seeds, 48 px: the CPU run (time in the results file)
    python scripts/part_vs_pgdat.py --quick    # a smoke run
    python scripts/part_vs_pgdat.py --dataset tfds:cifar10 --test-split test --size 32 --classes 10 \\
        --widths 64 128 256 --eps 8 --eps-low 7 --attack-steps 10 --warmup-steps 4000 --steps 12000   # accelerator

Per seed, the ReferenceCNN is first trained with PGD-AT for ``--warmup-steps`` (the paper's warm-up), then two
copies continue from it for ``--steps`` with the same optimiser, budget, PGD steps and step size: one with PGD-AT
(:func:`jaxcam.train.adversarial.pgd_at_loss`), one with PART (:func:`~jaxcam.train.adversarial.part_loss`:
``eps`` on the pixels whose per-step Grad-CAM z-score exceeds 1, ``eps_low`` elsewhere). On the test split:
clean accuracy, robust accuracy under PGD-``--eval-steps`` at the full ``eps`` everywhere (uniform start, step
eps/4), and the Grad-CAM pointing game at ``stage3``. The paper's claim: PART gains natural accuracy at (almost) no
cost in robustness; the paired per-seed differences (PART - PGD-AT) with 95 % Student-t intervals test it.
Budgets are in 1/255 pixel units. Writes ``part_vs_pgdat.{md,csv,png}`` into ``--out``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import jaxcam
from jaxcam.table import Table
from jaxcam.train import fit
from jaxcam.train.adversarial import robust_accuracy
from jaxcam.train.assess import experiment_data, experiment_parser, localisation, mean_interval, predict_accuracy

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("pgd_at", "part")
METRICS = ("clean_accuracy", "robust_accuracy", "pointing_game")


def parse(argv=None):
    p = experiment_parser(__doc__.splitlines()[0], ROOT / "scripts" / "results")
    p.add_argument("--eps", type=float, default=6.0, help="L-inf budget, in 1/255")
    p.add_argument("--eps-low", type=float, default=3.0, help="PART's budget of unimportant pixels, in 1/255")
    p.add_argument("--attack-steps", type=int, default=3, help="PGD steps while training")
    p.add_argument("--alpha", type=float, default=None, help="PGD step while training, in 1/255 (default eps/2)")
    p.add_argument("--eval-steps", type=int, default=10, help="PGD steps of the robust evaluation")
    p.add_argument("--warmup-steps", type=int, default=150, help="shared PGD-AT warm-up steps")
    p.add_argument("--steps", type=int, default=250, help="steps of each arm after the warm-up")
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.warmup_steps, a.steps, a.train_images, a.test_images, a.eval_steps = 1, 10, 10, 256, 64, 3
    if a.alpha is None:
        a.alpha = a.eps / 2
    return a


def score(model, test, args, seed):
    res = localisation(model, test["image"], test["mask"], test["label"]) if "mask" in test else None
    return {"clean_accuracy": predict_accuracy(model, test["image"], test["label"]),
            "robust_accuracy": robust_accuracy(model, test["image"], test["label"], 10_000 + seed,
                                               eps=args.eps / 255, alpha=args.eps / 4 / 255, steps=args.eval_steps),
            "pointing_game": None if res is None else res["gradcam"]["pointing_game"]}, res


def main(argv=None):
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, examples, start = [], None, time.perf_counter()
    common = {"eps": args.eps / 255, "alpha": args.alpha / 255, "steps": args.attack_steps}
    for seed in range(args.seeds):
        train, test = experiment_data(args.dataset, seed, train_images=args.train_images,
                                      test_images=args.test_images, size=args.size, num_classes=args.classes,
                                      test_split=args.test_split)
        model = jaxcam.reference_model(seed, num_classes=args.classes, size=args.size, widths=args.widths)
        norm = {"mean": tuple(model.mean), "std": tuple(model.std)}
        kw = dict(batch_size=args.batch_size, learning_rate=args.learning_rate, progress=False)
        t0 = time.perf_counter()
        warm = fit(model, train, steps=args.warmup_steps, loss="pgd_at", loss_options={**common, **norm}, key=seed,
                   **kw).model
        t_warm = time.perf_counter() - t0
        maps = {}
        for arm in ARMS:
            opts = {**common, **norm, **({"eps_low": args.eps_low / 255} if arm == "part" else {})}
            t0 = time.perf_counter()
            result = fit(warm, train, steps=args.steps, loss=arm, loss_options=opts, key=seed + 1000, **kw)
            seconds = time.perf_counter() - t0
            sc, res = score(result.model, test, args, seed)
            share = result.history["important_share"] if arm == "part" else None
            rows.append({"seed": seed, "arm": arm, **sc, "train_seconds": seconds, "warmup_seconds": t_warm,
                         "important_share": None if share is None else float(np.mean(share))})
            maps[arm] = None if res is None else res["gradcam"]["maps"][:3]
            print(f"seed {seed} {arm}: {seconds:.0f} s, clean {sc['clean_accuracy']:.4f}, robust "
                  f"{sc['robust_accuracy']:.4f}, PG {sc['pointing_game']}", flush=True)
        if examples is None and maps["part"] is not None:
            examples = (test["image"][:3], maps)
    write(args, rows, examples, time.perf_counter() - start)


def fmt(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    mean, half = mean_interval(vals)
    return f"{mean:.4f} ± {half:.4f}"


def verdict(diffs):
    """The claim holds when PART's clean-accuracy gain is positive with its interval above 0 and its robust
    accuracy is no more than 1 point below PGD-AT's (the interval's lower end)."""
    (gc, hc), (gr, hr) = mean_interval(diffs["clean_accuracy"]), mean_interval(diffs["robust_accuracy"])
    holds = gc - hc > 0 and gr - hr >= -0.01
    return (f"PART - PGD-AT: clean accuracy {100 * gc:+.2f} ± {100 * hc:.2f} points, robust accuracy "
            f"{100 * gr:+.2f} ± {100 * hr:.2f} points over {len(diffs['clean_accuracy'])} seed(s). "
            + ("The claim holds here: more natural accuracy at almost no cost in robustness." if holds else
               "The claim does not hold here (it needs a clean gain whose interval is above 0 and a robust loss "
               "of at most 1 point)."))


def write(args, rows, examples, total):
    Table.from_rows(rows).to_csv(args.out / "part_vs_pgdat.csv")
    summary = Table.from_rows([{"arm": arm, **{m: fmt([r[m] for r in rows if r["arm"] == arm]) for m in METRICS}}
                               for arm in ARMS])
    seeds = sorted({r["seed"] for r in rows})
    get = {(r["seed"], r["arm"]): r for r in rows}
    diffs = {m: [get[s, "part"][m] - get[s, "pgd_at"][m] for s in seeds] for m in METRICS[:2]}
    paired = Table.from_rows([{"seed": s, **{f"{m}_diff_points": 100 * diffs[m][i] for m in diffs},
                               "important_share": get[s, "part"]["important_share"]} for i, s in enumerate(seeds)])
    cmd = "python scripts/part_vs_pgdat.py" + (" --quick" if args.quick else "")
    md = ["# PART vs PGD-AT (synthetic localisation benchmark)", "",
          f"`{cmd}`: {args.seeds} seed(s); ReferenceCNN widths {args.widths}, {args.size} px, {args.classes} "
          f"classes, {args.train_images} training / {args.test_images} test images (dataset {args.dataset}); adam "
          f"{args.learning_rate}, batch {args.batch_size}; shared PGD-AT warm-up {args.warmup_steps} steps, then "
          f"{args.steps} steps per arm; training attack: eps {args.eps}/255, {args.attack_steps} PGD steps of "
          f"{args.alpha}/255, uniform start; PART: eps_low {args.eps_low}/255, Grad-CAM at stage3 of the predicted "
          f"class, z-score > 1, recomputed every step. Evaluation: PGD-{args.eval_steps} at eps {args.eps}/255 "
          f"(step eps/4, uniform start); Grad-CAM pointing game of the true class. {total:.0f} s in all.", "",
          "Means with 95 % Student-t intervals over seeds.", "", summary.to_markdown(), "",
          "## Paired differences (PART - PGD-AT, points) and PART's share of full-budget pixels", "",
          paired.to_markdown(), "", "## Verdict", "", verdict(diffs), ""]
    (args.out / "part_vs_pgdat.md").write_text("\n".join(md))
    plot(rows, examples, args.out / "part_vs_pgdat.png")
    print("\n".join(md))


def plot(rows, examples, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4 if examples else 1, figsize=(13 if examples else 4, 3.2), layout="constrained",
                             squeeze=False)
    ax = axes[0, 0]
    for arm, colour in zip(ARMS, ("tab:blue", "tab:orange")):
        sel = [r for r in rows if r["arm"] == arm]
        ax.scatter([r["clean_accuracy"] for r in sel], [r["robust_accuracy"] for r in sel], c=colour, label=arm)
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel("PGD robust accuracy")
    ax.set_title("per seed", fontsize=9)
    ax.legend(fontsize=8)
    if examples:
        images, maps = examples
        for j in range(3):
            a = axes[0, j + 1]
            a.imshow(images[j])
            a.imshow(maps["part"][j], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            a.contour(maps["pgd_at"][j], levels=[0.5], colors="w", linewidths=0.8)
            a.set_title(f"image {j}: PART Grad-CAM (colour),\nPGD-AT Grad-CAM 0.5 contour (white)", fontsize=8)
            a.set_xticks([])
            a.set_yticks([])
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
