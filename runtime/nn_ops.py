"""NumPy definitions of the windowed ops: conv2d (NCHW, stride, padding,
dilation, groups), max_pool2d (padding counts as -inf) and avg_pool2d
(padding counts as zeros in the average, as torch's count_include_pad=True),
and max_pool2d_grad, which routes each window's gradient to the first maximum
of the window in row-major order, as torch does (ties and NaN included)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int], dilation: tuple[int, int], fill: float) -> np.ndarray:
    """[N, C, OH, OW, KH, KW] view of the (padded) input's windows."""
    (ph, pw), (dh, dw) = padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    span = (dh * (kernel[0] - 1) + 1, dw * (kernel[1] - 1) + 1)
    win = sliding_window_view(xp, span, axis=(2, 3))[..., ::dh, ::dw]
    return win[:, :, ::stride[0], ::stride[1]]


def conv2d(x: np.ndarray, w: np.ndarray, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int], groups: int) -> np.ndarray:
    o, cg, kh, kw = w.shape
    win = _windows(x, (kh, kw), stride, padding, dilation, 0.0)
    n, c, oh, ow = win.shape[:4]
    win = win.reshape(n, groups, c // groups, oh, ow, kh, kw)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    return out.reshape(n, o, oh, ow)


def max_pool2d(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int]) -> np.ndarray:
    return _windows(x, kernel, stride, padding, (1, 1), -np.inf).max(axis=(-2, -1))


def avg_pool2d(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int]) -> np.ndarray:
    return _windows(x, kernel, stride, padding, (1, 1), 0.0).mean(axis=(-2, -1))


def max_pool2d_grad(x: np.ndarray, dy: np.ndarray, kernel: tuple[int, int],
                    stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    win = _windows(x, kernel, stride, padding, (1, 1), -np.inf)
    n, c, oh, ow, kh, kw = win.shape
    real = _windows(np.ones_like(x, dtype=bool), kernel, stride, padding, (1, 1), False)
    flat, real = win.reshape(n, c, oh, ow, kh * kw), real.reshape(n, c, oh, ow, kh * kw)
    top = np.where(real, flat, -np.inf).max(axis=-1, keepdims=True)  # NaN wins, as max
    hit = real & ((flat == top) | (np.isnan(flat) & np.isnan(top)))
    first = hit.argmax(axis=-1)  # the first real position holding the max (never padding)
    (sh, sw), (ph, pw) = stride, padding
    rows = np.arange(oh)[:, None] * sh - ph + first // kw
    cols = np.arange(ow)[None, :] * sw - pw + first % kw
    dx = np.zeros(x.shape, dy.dtype)
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    idx = (nn[..., None, None], cc[..., None, None], rows, cols)
    np.add.at(dx, idx, dy)  # overlapping windows may pick one input more than once
    return dx
