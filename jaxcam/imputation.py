"""ROAD's noisy linear imputation and scores as pure functions of a forward (Rong et al., ICML 2022).

The jit-able core shared by the ROAD metric (:mod:`jaxcam.metrics.road`, where the protocol and its parity notes
are documented) and adaptive MetaCAM inside the explain program: it takes a forward function, never a model, so
the CAM driver and the metrics both import it and neither imports the other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
_OFFSETS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
            ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def _neighbour_sum(v, c: int):
    """sum over in-image 8-neighbours of weight * v, for an (H, W*C) image with its C channels interleaved along the
    minor axis (a one-pixel step is ``c`` elements; zero outside the image). The flat layout keeps the minor axis
    long (W*C, not C = 3), which XLA's CPU loops vectorise: ~15% less time per conjugate-gradient step than (H, W, C),
    with bit-identical results."""
    h, wc = v.shape
    pad = jnp.pad(v, ((1, 1), (c, c)))
    return sum(wt * pad[1 + di:1 + di + h, c + dj * c:c + dj * c + wc] for (di, dj), wt in _OFFSETS)


def _restrict(v, c: int):
    """(H, W*C) -> (ceil(H/2), ceil(W/2)*C): the sum of each 2x2 block of pixels (a missing row or column counts
    as zeros). Rows by strided slices, then column pairs on the half-height array: XLA:CPU runs this about twice
    as fast as one 5-d reshape and sum."""
    h, wc = v.shape
    w = wc // c
    v = jnp.pad(v, ((0, h % 2), (0, (w % 2) * c)))
    rows = v[0::2] + v[1::2]
    pairs = rows.reshape(rows.shape[0], (w + 1) // 2, 2, c)
    return (pairs[:, :, 0] + pairs[:, :, 1]).reshape(rows.shape[0], ((w + 1) // 2) * c)


def _prolong(v, c: int, h: int, w: int):
    """The transpose of :func:`_restrict`: each coarse pixel copied to its 2x2 block, cropped to (h, w*c)."""
    hc, wcc = v.shape
    wc_ = wcc // c
    cols = jnp.broadcast_to(v.reshape(hc, wc_, 1, c), (hc, wc_, 2, c)).reshape(hc, 2 * wc_ * c)
    return jnp.repeat(cols, 2, axis=0)[:h, :w * c]


_OMEGA, _SWEEPS, _MIN_SIDE, _LEVELS = 0.8, 8, 8, 5


def _masked_laplacian(u, c: int):
    """ROAD's system for unknown-pixel mask ``u`` (H, W*C, 1 = imputed) as ``(operator, diagonal)``: each imputed
    pixel's weighted 8-neighbour mean subtracted, known pixels the identity."""
    valid = _neighbour_sum(jnp.ones_like(u), c)

    def operator(x):
        return u * (valid * x - _neighbour_sum(u * x, c)) + (1 - u) * x

    return operator, u * valid + (1 - u)


def _multigrid(u, c: int):
    """A symmetric positive definite preconditioner for :func:`_masked_laplacian`: one geometric V-cycle.

    Levels halve the grid (a coarse pixel is imputed when all four of its pixels are, so the correction stays zero
    at known pixels) down to ``_MIN_SIDE`` pixels a side or ``_LEVELS`` levels; restriction sums 2x2 blocks and
    prolongation copies back (its transpose), the coarse systems are ROAD's own stencil on the coarse grid, one
    damped-Jacobi sweep (weight ``_OMEGA``) smooths before and after the coarse correction and ``_SWEEPS`` sweeps
    solve the coarsest level. Symmetric smoothing with ``R = P^T`` keeps the preconditioner symmetric, as conjugate
    gradients needs; it changes the iterations, not what they converge to (the stopping test is the same
    unpreconditioned residual)."""
    levels = [(u,) + _masked_laplacian(u, c)]
    while len(levels) < _LEVELS and min(u.shape[0], u.shape[1] // c) >= 2 * _MIN_SIDE:
        u = (_restrict(u, c) >= 4).astype(u.dtype)
        levels.append((u,) + _masked_laplacian(u, c))

    def cycle(i, r):
        u, operator, diag = levels[i]
        x = _OMEGA * r / diag
        if i == len(levels) - 1:
            for _ in range(_SWEEPS - 1):
                x = x + _OMEGA * (r - operator(x)) / diag
            return x
        coarse = levels[i + 1][0] * _restrict(r - operator(x), c)
        x = x + u * _prolong(cycle(i + 1, coarse), c, u.shape[0], u.shape[1] // c)
        return x + _OMEGA * (r - operator(x)) / diag

    return lambda r: cycle(0, r)


def impute(img, keep, noise: float | tuple = 0.0, key=None, maxiter: int = 2000, tol: float = 1e-7,
           multigrid: bool = True):
    """Noisy linear imputation of the pixels where ``keep`` (H, W) is False, for one (H, W, C) image.

    Conjugate gradients on the masked system, preconditioned by one multigrid V-cycle (``multigrid``, default:
    2 to 3 times fewer operator applications in all than plain CG on ROAD's masks; the same stopping test, so the
    same solution to the solver's tolerance, about 1e-5)."""
    h, w, c = img.shape
    flat = img.reshape(h, w * c)
    u = jnp.repeat((~keep).astype(img.dtype), c, axis=1)  # (H, W*C): 1 where the pixel is imputed
    operator, _ = _masked_laplacian(u, c)
    b = u * _neighbour_sum(flat * (1 - u), c)

    # start from the mean of the known pixels; with none known the system is singular (any constant solves it) and
    # the start, 0, is kept: pytorch-grad-cam's spsolve returns 0 there too
    known = jnp.maximum(jnp.sum(1 - u) / c, 1.0)
    mean = jnp.sum((flat * (1 - u)).reshape(h, w, c), axis=(0, 1)) / known
    x0 = u * jnp.tile(mean, w)[None, :]
    x, _ = jax.scipy.sparse.linalg.cg(operator, b, x0=x0, tol=tol, maxiter=maxiter,
                                      M=_multigrid(u, c) if multigrid else None)
    x = x.reshape(h, w, c)
    scale = jnp.asarray(noise, img.dtype)
    if scale.ndim:  # one noise level per channel
        scale = scale.reshape(1, 1, -1)
    if np.any(np.asarray(noise)):
        x = x + scale * jax.random.normal(key, img.shape, img.dtype)
    return jnp.where(keep[..., None], img, x)


def _keep_mask(cam, percentile, most_relevant_first):
    m = jnp.where(most_relevant_first, cam, 1 - cam)  # a traced flag: MoRF and LeRF share one program
    return m < jnp.percentile(m, percentile)


def road_chunks(n: int, n_percentiles: int, batch_size: int) -> np.ndarray:
    """The (chunks, b) job indices of ROAD's ``n * n_percentiles`` imputations, ``b = min(batch_size, total)``:
    percentile-major (a chunk holds one percentile's images, whose solves take similar iteration counts), the last
    chunk wrapping round to the first jobs (no ragged shapes; the repeats are dropped by :func:`road_average`)."""
    total = n * n_percentiles
    b = min(batch_size, total)
    chunks = -(-total // b)
    return (np.arange(chunks * b) % total).reshape(chunks, b).astype(np.int32)


def road_chunk(forward, score, x, cams, cls, pct, most_relevant_first, noise, keys, ks, sequential: bool = True):
    """(b,) scores of the imputed images of jobs ``ks`` (job ``k``: image ``k % N`` at percentile ``pct[k // N]``,
    noise from ``keys[image, percentile]``), scored by one batched forward. The imputations run one after another
    (``sequential``: each conjugate-gradient solve stops at its own convergence) or vmapped (accelerators)."""
    n = x.shape[0]

    def impute_one(k):
        p, i = k // n, k % n
        return impute(x[i], _keep_mask(cams[i], pct[p], most_relevant_first), noise, keys[i, p])

    imgs = jax.lax.map(impute_one, ks) if sequential else jax.vmap(impute_one)(ks)
    return jax.vmap(score)(forward(imgs), cls[ks % n])


def road_average(after, base, n: int, n_percentiles: int):
    """(N,) mean over percentiles of ``after - base``, from the chunks' scores ``after`` (chunks, b)."""
    return after.reshape(-1)[:n * n_percentiles].reshape(n_percentiles, n).mean(axis=0) - base


def road_scores(forward, score, x, cams, cls, percentiles=PERCENTILES, most_relevant_first: bool = True,
                noise: float = 0.0, key=None, batch_size: int = 16, sequential: bool | None = None):
    """(N,) mean over ``percentiles`` of ``target(f(imputed)) - target(f(x))``: ROAD MoRF or LeRF averaged.

    The (image, percentile) imputations run in chunks of ``batch_size`` (:func:`road_chunks`), each chunk's
    imputed images scored by one batched forward (:func:`road_chunk`), all chunks in one ``lax.map``. Within a chunk
    the imputations run one after another (``sequential``, the default on CPU) or vmapped (accelerators).
    """
    n, n_p = x.shape[0], len(percentiles)
    key = jax.random.key(0) if key is None else key
    sequential = jax.default_backend() == "cpu" if sequential is None else sequential
    base = jax.vmap(score)(forward(x), cls)
    pct = jnp.asarray(percentiles, x.dtype)
    keys = jax.random.split(key, (n, n_p))
    after = jax.lax.map(lambda ks: road_chunk(forward, score, x, cams, cls, pct, most_relevant_first, noise, keys,
                                              ks, sequential), jnp.asarray(road_chunks(n, n_p, batch_size)))
    return road_average(after, base, n, n_p)


def road_combined_scores(forward, score, x, cams, cls, percentiles=PERCENTILES, noise: float = 0.0, key=None,
                         batch_size: int = 16):
    """pytorch-grad-cam's ``ROADCombined``: (LeRF average - MoRF average) / 2, per image."""
    k1, k2 = jax.random.split(jax.random.key(0) if key is None else key)
    lerf = road_scores(forward, score, x, cams, cls, percentiles, False, noise, k1, batch_size)
    morf = road_scores(forward, score, x, cams, cls, percentiles, True, noise, k2, batch_size)
    return (lerf - morf) / 2
