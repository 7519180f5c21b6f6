"""Independent references for the tests: hand-written TF 'same', loop-built dense kernels."""

import math

import torch
import torch.nn.functional as F


def tf_same_pads_1d(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's documented 'SAME' rule, written out independently of sepconv.padding."""
    out = math.ceil(n / s)
    eff = (k - 1) * d + 1
    total = max((out - 1) * s + eff - n, 0)
    before = math.floor(total / 2)
    return before, total - before


def explicit_pads(padding, kernel, stride, dilation, size):
    """Per-dim (before, after) pads for an int/tuple/'valid'/'same' padding."""
    n = len(kernel)
    if padding == "valid":
        return [(0, 0)] * n
    if padding == "same":
        return [tf_same_pads_1d(size[i], kernel[i], stride[i], dilation[i]) for i in range(n)]
    if isinstance(padding, int):
        return [(padding, padding)] * n
    return [(p, p) for p in padding]


def dense_reference(x, weight, bias, stride, dilation, groups, pads, padding_mode):
    """F.pad + F.convNd, the dense conv every layer must equal."""
    n = weight.dim() - 2
    flat = []
    for b, a in reversed(pads):
        flat += [b, a]
    mode = "constant" if padding_mode == "zeros" else padding_mode
    if any(flat):
        x = F.pad(x, flat, mode=mode)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return conv(x, weight, bias, stride, 0, dilation, groups)


def dense_of_separable(dw, pw, d):
    """W[n, c] = sum_j P[n, c*d + j] D[c*d + j], by loops."""
    n_out, mid = pw.shape[:2]
    c_in = mid // d
    w = torch.zeros(n_out, c_in, *dw.shape[2:], dtype=dw.dtype)
    for n in range(n_out):
        for c in range(c_in):
            for j in range(d):
                w[n, c] += pw[n, c * d + j].reshape(()) * dw[c * d + j, 0]
    return w


def dense_of_blueprint(pw, dw):
    """W[n, c] = sum_j P[n*r + j, c] B[n, j], by loops."""
    n_out, r = dw.shape[:2]
    c_in = pw.shape[1]
    w = torch.zeros(n_out, c_in, *dw.shape[2:], dtype=dw.dtype)
    for n in range(n_out):
        for c in range(c_in):
            for j in range(r):
                w[n, c] += pw[n * r + j, c].reshape(()) * dw[n, j]
    return w


def dense_of_spatial(v, h, groups):
    """Per group: W[o, i] = sum_q outer(V[q, i, :, 0], H[o, q, 0, :]), by loops."""
    r, cg, kh, _ = v.shape
    n_out, rg, _, kw = h.shape
    w = torch.zeros(n_out, cg, kh, kw, dtype=v.dtype)
    per_out = n_out // groups
    for o in range(n_out):
        g = o // per_out
        for i in range(cg):
            for q in range(rg):
                w[o, i] += torch.outer(v[g * rg + q, i, :, 0], h[o, q, 0, :])
    return w
