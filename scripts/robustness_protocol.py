"""The noise-robustness protocol of Sarkar et al. (arXiv 2508.18154) as one command: rows, summaries, tests, plots.

Runs :func:`jaxcam.robustness.run` (the paper's six CAM methods by default, or ``--methods all`` for every
registered method that applies) over a noise grid, then writes into ``--out``:

- ``parts/*.parquet`` (the rows, written as they are computed; ``--resume`` continues a killed run) and ``rows.csv``;
- ``summary.csv`` / ``summary.md``: per method x noise x severity, Consistency, Responsiveness and RM with bootstrap
  intervals and the counts of unchanged / changed predictions;
- ``friedman.md``: per noise, a Friedman test across methods (blocks: image x severity x draw, values: the
  similarity) with Nemenyi post-hoc pairs, and Wilcoxon-Holm pairs;
- ``rm_by_noise.png`` (RM per method per noise), ``similarity_vs_severity.png`` (mean similarity against severity,
  one panel per noise) and ``maps_<image>.png`` (clean versus noisy maps for the first image, every method and
  severity of the first noise). Plots need matplotlib.

Default: the embedded EfficientNet-Lite0 on scikit-image's photographs.

    python scripts/robustness_protocol.py --out runs/robustness [--source sample|folder:DIR|tfds:NAME[:SPLIT]]
        [--model resnet50 --weights resnet50.pth] [--methods gradcam ... | all] [--noises gaussian shot ...]
        [--severities 1 2 3 4 5] [--draws 2] [--similarity rbo] [--resume]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import jaxcam
from jaxcam import robustness as R
from jaxcam.metrics import friedman, wilcoxon_holm


def _model(args):
    if args.model == "efficientnet_lite0" and args.weights is None:
        return jaxcam.load_model()
    return jaxcam.load_model(args.model, weights=args.weights)


def _methods(spec, model):
    if spec == ["all"]:
        return [m for m in jaxcam.METHODS if not jaxcam.METHODS[m].gap_fc_only
                and jaxcam.METHODS[m].output != "ensemble"]
    return spec


def _tests(rows, out):
    lines = []
    for noise in sorted(set(rows["noise"])):
        sub = rows.where(noise=noise)
        block = [f"{i}|{s}|{d}" for i, s, d in zip(sub["image"], sub["severity"], sub["draw"])]
        t = jaxcam.Table({"block": block, "method": sub["method"], "value": sub["value"].astype(float)})
        if len(set(t["method"])) < 2 or len(set(block)) < 2:
            continue
        f = friedman(t, nan_policy="omit")
        lines += [f"## {noise}", "", f.table.to_markdown(), "", "Nemenyi:", "", f.posthoc.to_markdown(), "",
                  "Wilcoxon-Holm:", "", wilcoxon_holm(t, nan_policy="omit").to_markdown(), ""]
    with open(os.path.join(out, "friedman.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def _plots(model, rows, summary, out, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(rows["method"]))
    noises = list(dict.fromkeys(rows["noise"]))
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(noises), 4))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        vals = []
        for n in noises:
            s = summary.where(method=m, noise=n)
            vals.append(np.nanmean(s["rm"].astype(float)) if len(s) else np.nan)
        ax.bar(np.arange(len(noises)) + j * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(noises)) + 0.4 - width / 2, noises)
    ax.set_ylabel("RM (mean over severities)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rm_by_noise.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(noises), figsize=(3.2 * len(noises), 3), squeeze=False)
    for ax, n in zip(axes[0], noises):
        for m in methods:
            sub = rows.where(noise=n, method=m)
            sev = sorted(set(sub["severity"].tolist()))
            ax.plot(sev, [sub.where(severity=s)["value"].astype(float).mean() for s in sev], marker="o", label=m)
        ax.set_title(n)
        ax.set_xlabel("severity")
    axes[0][0].set_ylabel(f"mean {args.similarity}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "similarity_vs_severity.png"), dpi=120)
    plt.close(fig)

    src = jaxcam.datasets.as_source(args.source)
    first = next(src.batches(1, size=args.size))
    pixels = first["image"]
    noise = noises[0]
    sev = sorted(set(rows.where(noise=noise)["severity"].tolist()))
    fig, axes = plt.subplots(len(methods), len(sev) + 1, figsize=(1.8 * (len(sev) + 1), 1.8 * len(methods)),
                             squeeze=False)
    key = jaxcam.noise.job_key(__import__("jax").random.key(args.key), R.image_hash(first["id"][0]), noise, 0, 0)
    noisy = [pixels[0]] + [np.asarray(jaxcam.noise.perturb(noise, key, pixels[0], s,
                                                           logits_fn=jaxcam.noise.pixel_logits(model)))
                           for s in sev]
    x = model.preprocess(np.stack(noisy))
    maps = jaxcam.explain(model, x, methods, preprocessed=True)
    for i, m in enumerate(methods):
        for j, img in enumerate(noisy):
            ax = axes[i][j]
            ax.imshow(img)
            ax.imshow(np.asarray(maps[m][j]), cmap="viridis", alpha=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("clean" if j == 0 else f"{noise} {sev[j - 1]}", fontsize=8)
            if j == 0:
                ax.set_ylabel(m, fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"maps_{first['id'][0]}.png".replace("/", "_")), dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--source", default="sample")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--methods", nargs="+", default=list(R.PAPER_METHODS))
    ap.add_argument("--noises", nargs="+", default=["gaussian", "shot", "impulse", "speckle"])
    ap.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--similarity", default="rbo")
    ap.add_argument("--explain-class", default="new_prediction", choices=["new_prediction", "original_prediction"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--image-batch", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--key", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)

    model = _model(args)
    methods = _methods(args.methods, model)
    rows = R.run(model, args.source, args.out, methods=methods, noises=args.noises, severities=args.severities,
                 draws=args.draws, key=args.key, similarity=args.similarity, explain_class=args.explain_class,
                 image_batch=args.image_batch, chunk=args.chunk, size=args.size, resume=args.resume)
    rows.to_csv(os.path.join(args.out, "rows.csv"))
    summary = R.summarise(rows, key=args.key)
    summary.to_csv(os.path.join(args.out, "summary.csv"))
    with open(os.path.join(args.out, "summary.md"), "w") as fh:
        fh.write(summary.to_markdown() + "\n")
    _tests(rows, args.out)
    if not args.no_plots:
        _plots(model, rows, summary, args.out, args)
    changed = rows["changed"].astype(bool)
    print(f"{len(rows)} rows ({int(changed.sum())} with a changed prediction) for {len(methods)} methods; "
          f"summary, tests and plots in {args.out}")


if __name__ == "__main__":
    main()
