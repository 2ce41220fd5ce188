"""Normalization: layer_norm, and batch_norm with its running statistics.

Both normalize with the overflow-safe rows of _normalize_rows; batch norm in
training mode also returns its buffers updated from the batch (as torch), which
the entry returns as `new.<buffer>` outputs (lang/emitter.py update_state).
"""

from __future__ import annotations

from typing import Any

from ember.ir import dims
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op

from .builtins import _count, _fconst, _reduce, _t, builtin
from .values import Tensor, describe


@builtin
def layer_norm(em: Any, loc: Loc, x: Any, weight: Any, bias: Any, eps: float = 1e-5) -> Tensor:
    """Normalize over the last axis (biased variance), then scale and shift."""
    x = _t(em, x, loc)
    normed = _normalize(em, x, (em.type(x).rank - 1,), None, eps, loc)
    return _affine(em, normed, weight, bias, loc)


def _normalize(em: Any, x: Tensor, axes: tuple[int, ...], stats: tuple[Tensor, Tensor] | None,
               eps: float, loc: Loc) -> Tensor:
    if stats is None:
        return _normalize_rows(em, x, axes, eps, loc)
    mu, var = stats
    d = em.add(Op.SUB, (x, mu), {}, loc)
    inv = em.add(Op.RSQRT, (em.add(Op.ADD, (var, _fconst(em, x, eps, loc)), {}, loc),), {}, loc)
    return em.add(Op.MUL, (d, inv), {}, loc)


def _normalize_rows(em: Any, x: Tensor, axes: tuple[int, ...], eps: float, loc: Loc) -> Tensor:
    """(x - mean) / sqrt(var + eps) over `axes`, computed on y = x / m with
    m = max(max |x|, 1) as (y - mean y) / sqrt(var y + eps / m^2): the same
    value, but no square overflows (float32 rows near 1e30 would give var = inf
    and silently return zeros). Rows within [-1, 1] have m = 1 and get the plain
    formula bit for bit. m cancels out of the result, hence stop_grad."""
    peak = _reduce(em, Op.MAX, em.add(Op.ABS, (x,), {}, loc), axes, loc)
    m = em.add(Op.MAXIMUM, (peak, _fconst(em, x, 1.0, loc)), {}, loc)
    m = em.add(Op.STOP_GRAD, (m,), {}, loc)
    y = em.add(Op.DIV, (x, m), {}, loc)
    d = em.add(Op.SUB, (y, _reduce(em, Op.MEAN, y, axes, loc)), {}, loc)
    var = _reduce(em, Op.MEAN, em.add(Op.MUL, (d, d), {}, loc), axes, loc)
    eps_m = em.add(Op.DIV, (_fconst(em, x, eps, loc), em.add(Op.MUL, (m, m), {}, loc)), {}, loc)
    inv = em.add(Op.RSQRT, (em.add(Op.ADD, (var, eps_m), {}, loc),), {}, loc)
    return em.add(Op.MUL, (d, inv), {}, loc)


def _affine(em: Any, x: Tensor, weight: Any, bias: Any, loc: Loc) -> Tensor:
    scaled = em.add(Op.MUL, (x, _t(em, weight, loc, x)), {}, loc)
    return em.add(Op.ADD, (scaled, _t(em, bias, loc, x)), {}, loc)


@builtin
def batch_norm(em: Any, loc: Loc, x: Any, weight: Any, bias: Any, running_mean: Any,
               running_var: Any, eps: float = 1e-5, momentum: float = 0.1) -> Tensor:
    """Per-channel (axis 1) normalization: batch statistics when training (and
    the running statistics updated from them, as torch), running statistics in
    eval mode."""
    x = _t(em, x, loc)
    rank = em.type(x).rank
    if rank < 2:
        raise DSLError(f"batch_norm expects [N, C, ...], found {em.type(x)}", loc)
    channel = (1, em.type(x).shape[1]) + (1,) * (rank - 2)
    axes = tuple(a for a in range(rank) if a != 1)
    stats = tuple(em.add(Op.RESHAPE, (_t(em, s, loc, x),), {"shape": channel}, loc)
                  for s in (running_mean, running_var))
    if em.train:
        _update_running_stats(em, x, axes, stats, (running_mean, running_var), momentum, loc)
    normed = _normalize(em, x, axes, None if em.train else stats, eps, loc)
    w, b = (em.add(Op.RESHAPE, (_t(em, p, loc, x),), {"shape": channel}, loc)
            for p in (weight, bias))
    return _affine(em, normed, w, b, loc)


def _update_running_stats(em: Any, x: Tensor, axes: tuple[int, ...], stats: tuple[Tensor, ...],
                          buffers: tuple[Any, ...], momentum: Any, loc: Loc) -> None:
    """running = (1 - momentum) * running + momentum * batch statistic, with the
    unbiased batch variance for running_var (torch.nn.BatchNorm's rule)."""
    if not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
        raise DSLError(f"batch_norm momentum must be a number in [0, 1], found "
                       f"{describe(momentum)}", loc)
    n = dims.prod(tuple(em.type(x).shape[a] for a in axes))
    if n == 1:
        raise DSLError("batch_norm in training mode needs more than one value per channel "
                       f"(input {em.type(x)})", loc)
    names = _running_stat_names(em, buffers, loc)
    if names is None:
        return
    mean = _reduce(em, Op.MEAN, x, axes, loc)
    d = em.add(Op.SUB, (x, mean), {}, loc)
    var_sum = _reduce(em, Op.SUM, em.add(Op.MUL, (d, d), {}, loc), axes, loc)
    n_minus_1 = em.add(Op.SUB, (_count(em, n, x, loc), _fconst(em, x, 1.0, loc)), {}, loc)
    unbiased = em.add(Op.DIV, (var_sum, n_minus_1), {}, loc)
    for name, old, batch in zip(names, stats, (mean, unbiased)):
        kept = em.add(Op.MUL, (old, _fconst(em, x, 1.0 - momentum, loc)), {}, loc)
        new = em.add(Op.ADD, (kept, em.add(Op.MUL, (batch, _fconst(em, x, float(momentum), loc)),
                                                {}, loc)), {}, loc)
        shape = em.type(buffers[names.index(name)]).shape
        em.update_state(name, em.add(Op.RESHAPE, (new,), {"shape": shape}, loc), loc)


def _running_stat_names(em: Any, stats: tuple[Any, ...], loc: Loc) -> list[str] | None:
    """The buffers batch norm updates; None for plain tensors (an entry's
    inputs: batch statistics, nothing to update). A trainable parameter, or
    one buffer beside a plain tensor, would silently lose the update: an error."""
    params = [em.param_name(t) if isinstance(t, Tensor) else None for t in stats]
    names = [em.buffer_name(t) if isinstance(t, Tensor) else None for t in stats]
    for p, b in zip(params, names):
        if p is not None and b is None:
            raise DSLError(f"'{p}' is a trainable parameter, but batch_norm updates its "
                           f"running statistics in training mode: declare it `buffer {p}: ...`",
                           loc)
    if None in names and names != [None, None]:
        raise DSLError("batch_norm's running_mean and running_var must both be buffers "
                       "(or both plain tensors)", loc)
    return None if None in names else [str(b) for b in names]
