"""The noise-robustness protocol of Sarkar et al. (arXiv 2508.18154) as one command: a thin wrapper around
``jaxcam robustness`` (``jaxcam/cli/robustness.py``), kept so existing invocations keep working.

Every argument is passed on unchanged, so this is ``jaxcam robustness ARGS...``: it runs
:func:`jaxcam.robustness.run` over a noise grid (resumable Parquet parts under ``--out``, default
``runs/robustness``), then writes ``rows.csv``, ``summary.csv``/``summary.md`` (C, Rsp and RM with bootstrap
intervals), ``friedman.md`` (Friedman + Nemenyi and Wilcoxon-Holm per noise), ``rm_by_noise.png``,
``similarity_vs_severity.png``, ``maps_<image>.png`` and a self-contained ``report.html``. See
``jaxcam robustness --help`` and ``docs/robustness.md``.

    python scripts/robustness_protocol.py [IMAGE ... | --dataset sample|folder:DIR|tfds:NAME[:SPLIT]]
        [--model resnet50 --weights resnet50.pth] [--methods gradcam ... | all] [--noises gaussian shot ...]
        [--severities 1 2 3 4 5] [--draws 2] [--similarity rbo] [--out runs/robustness] [--resume] [--no-report]

(Before this command existed the script took ``--source SPEC`` and ``--no-plots``; they are now ``--dataset SPEC``
and ``--no-report``.)
"""

from __future__ import annotations

import sys

from jaxcam.cli import main

if __name__ == "__main__":
    sys.exit(main(["robustness", *sys.argv[1:]]))
