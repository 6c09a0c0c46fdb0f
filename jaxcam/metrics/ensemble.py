"""MetaCAM's ensemble analysis (Kaczmarek et al., arXiv 2307.16863): every subset of member CAMs scored by ROAD, and
each member's Cumulative Residual Effect (CRE) on those scores.

:func:`subset_scores` builds the MetaCAM consensus map of every non-empty subset of the members (top-``k`` voting
plus ``delta`` times the members' mean, :func:`jaxcam.methods.multipass.metacam`) and scores it with pytorch-grad-cam's
``ROADCombined`` (the number the paper reports), all subsets in one compiled program (``lax.map`` over subsets).
:func:`cumulative_residual_effect` then gives, for member i, the residuals ``r_i(S) = score(S + {i}) - score(S)``
over every subset S without i that was scored (the empty set is skipped: it has no score), their sum (CRE) and mean.
CRE > 0: adding the member helps the ensemble on average. The paper's exact CRE formula was not recovered; this is
the reconstruction in the project's reference notes, stated here so the numbers can be read.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError
from ..keys import as_key
from .. import targets as targets_mod
from ..methods.multipass import top_fraction_threshold
from ..table import Table
from .inputs import check_maps, default_batch_size
from ..imputation import PERCENTILES, road_combined_scores


def all_subsets(names, max_size: int | None = None) -> list[tuple[str, ...]]:
    names = tuple(names)
    top = len(names) if max_size is None else min(max_size, len(names))
    return [s for r in range(1, top + 1) for s in itertools.combinations(names, r)]


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _subset_road(stage_range, score, percentiles, noise, batch_size, params, x, stack, weights, classes, k, delta,
                 key):
    forward = jax.tree_util.Partial(stage_range, params)
    cls = jnp.argmax(forward(x), -1).astype(jnp.int32) if classes is None else classes
    votes = (stack >= top_fraction_threshold(stack, k)).astype(stack.dtype)  # (M, N, H, W)

    def one(w):
        size = w.sum()
        cam = (jnp.einsum("m,mnhw->nhw", w, votes) + delta * jnp.einsum("m,mnhw->nhw", w, stack)) / size
        return road_combined_scores(forward, score, x, cam, cls, percentiles, noise, key, batch_size)

    return jax.lax.map(one, weights)  # (S, N)


def subset_scores(model, x, member_maps: Mapping[str, jax.Array], targets=None, *, k: float = 0.1,
                  delta: float = 1e-3, max_size: int | None = None, percentiles=PERCENTILES, noise: float = 0.0,
                  key=0, batch_size: int | None = None) -> Table:
    """ROAD-combined score of the MetaCAM map of every non-empty subset (up to ``max_size`` members) of
    ``member_maps`` ({name: (N, H, W) maps in [0, 1]}) on the preprocessed batch ``x``. One row per subset x image:
    columns ``subset`` ("a+b"), ``size``, ``image``, ``score``. ``noise``: ROAD's imputation noise (0 makes the
    scores of different subsets directly comparable; the same ``key`` is used for every subset either way)."""
    if not member_maps:
        raise InvalidArgumentError("member_maps is empty")
    x = model.check_input(x)
    names = list(member_maps)
    stack = jnp.stack([check_maps(member_maps[m], x.shape[0], tuple(x.shape[1:3]), name=f"member_maps[{m!r}]")
                       for m in names])
    classes = targets_mod.class_indices(targets, x.shape[0], model.num_classes)
    subsets = all_subsets(names, max_size)
    weights = jnp.asarray([[float(m in s) for m in names] for s in subsets], jnp.float32)
    key = as_key(key)
    scores = np.asarray(_subset_road(model.tapped.plain, targets_mod.probability, tuple(percentiles),
                                     float(noise), default_batch_size(batch_size), model.params, x, stack, weights,
                                     classes, jnp.float32(k), jnp.float32(delta), key))
    n = x.shape[0]
    return Table({"subset": np.repeat(["+".join(s) for s in subsets], n),
                  "size": np.repeat([len(s) for s in subsets], n),
                  "image": np.tile(np.arange(n), len(subsets)), "score": scores.reshape(-1)})


def cumulative_residual_effect(scores) -> Table:
    """Per member: ``cre`` (sum of residuals), ``mean_residual`` and ``pairs`` (how many (S, S + {i}) pairs were
    scored). ``scores``: the Table from :func:`subset_scores` (averaged over images first) or a mapping
    {subset (tuple of names or "a+b" string): score}."""
    if isinstance(scores, Table):
        agg: dict[frozenset, list] = {}
        for r in scores.rows():
            agg.setdefault(frozenset(r["subset"].split("+")), []).append(r["score"])
        table = {s: float(np.mean(v)) for s, v in agg.items()}
    else:
        table = {frozenset(s.split("+") if isinstance(s, str) else s): float(v) for s, v in scores.items()}
    members = sorted(set().union(*table)) if table else []
    rows = []
    for m in members:
        res = [table[s | {m}] - v for s, v in table.items() if m not in s and (s | {m}) in table]
        rows.append({"member": m, "cre": float(np.sum(res)) if res else float("nan"),
                     "mean_residual": float(np.mean(res)) if res else float("nan"), "pairs": len(res)})
    return Table.from_rows(rows, ["member", "cre", "mean_residual", "pairs"])
