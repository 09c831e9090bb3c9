"""The numba kernels behind recurrent_jit.py (imported only from there, and only when the JIT path is wanted:
importing this module imports numba). See recurrent_jit.py for what they compute and how close they are.
"""
import numba
import numpy as np

f32 = np.float32
# error_model numpy: no ZeroDivisionError branch on the division, which would stop the vectorising
KW = dict(fastmath=True, boundscheck=False, error_model="numpy", cache=True, nogil=True)
clamp = f32(7.90531110763549805)
a1, a3, a5, a7 = f32(4.89352455891786e-03), f32(6.37261928875436e-04), f32(1.48572235717979e-05), \
    f32(5.12229709037114e-08)
a9, a11, a13 = f32(-8.60467152213735e-11), f32(2.00018790482477e-13), f32(-2.76076847742355e-16)
b0, b2, b4, b6 = f32(4.89352518554385e-03), f32(2.26843463243900e-03), f32(1.18534705686654e-04), \
    f32(1.19825839466702e-06)
half, one = f32(0.5), f32(1.0)


@numba.njit(inline="always", **KW)
def tanh(x):
    x = x if x < clamp else clamp
    x = x if x > -clamp else -clamp
    x2 = x * x
    p = ((((((x2 * a13 + a11) * x2 + a9) * x2 + a7) * x2 + a5) * x2 + a3) * x2 + a1) * x
    q = ((x2 * b6 + b4) * x2 + b2) * x2 + b0
    return p / q


@numba.njit(inline="always", **KW)
def sig(x):
    return half * tanh(half * x) + half


@numba.njit(**KW)
def lstm_fwd(pre, rec, has_rec, scale, shift, c_prev, h, c):
    # two loops per row, each one LLVM vectorises: the gates in place (sigmoid(x) = 0.5 tanh(0.5 x) + 0.5,
    # so one tanh with a per-column scale and shift serves all four), then c and h from them
    n, o = c_prev.shape
    for r in range(n):
        p = pre[r]
        if has_rec:
            q = rec[r]
            for u in range(4 * o):
                p[u] = tanh((p[u] + q[u]) * scale[u]) * scale[u] + shift[u]
        else:
            for u in range(4 * o):
                p[u] = tanh(p[u] * scale[u]) * scale[u] + shift[u]
        cp, hr, cr = c_prev[r], h[r], c[r]
        for u in range(o):
            cv = p[o + u] * cp[u] + p[u] * p[2 * o + u]
            cr[u] = cv
            hr[u] = p[3 * o + u] * tanh(cv)


@numba.njit(**KW)
def lstm_bwd(act, c, c_prev, dh, dc, dpre):
    n, o = c.shape
    for r in range(n):
        for u in range(o):
            ai, af, ag, ao = act[r, u], act[r, o + u], act[r, 2 * o + u], act[r, 3 * o + u]
            tc = tanh(c[r, u])
            g = dh[r, u]
            d = dc[r, u] + g * ao * (one - tc * tc)
            dpre[r, u] = d * ag * ai * (one - ai)
            dpre[r, o + u] = d * c_prev[r, u] * af * (one - af)
            dpre[r, 2 * o + u] = d * ai * (one - ag * ag)
            dpre[r, 3 * o + u] = g * tc * ao * (one - ao)
            dc[r, u] = d * af


@numba.njit(**KW)
def gru_fwd(xg, hg, has_rec, bhh, h_prev, h, hn):
    # per row: r and z in one vectorised loop, then n, hn and h in another
    n, o = h_prev.shape
    for r in range(n):
        x, hp, hr, hnr = xg[r], h_prev[r], h[r], hn[r]
        g = hg[r]
        if has_rec:
            for u in range(2 * o):
                x[u] = sig(x[u] + (g[u] + bhh[u]))
            for u in range(o):
                hnr[u] = g[2 * o + u] + bhh[2 * o + u]
        else:
            for u in range(2 * o):
                x[u] = sig(x[u] + bhh[u])
            for u in range(o):
                hnr[u] = bhh[2 * o + u]
        for u in range(o):
            nv = tanh(x[2 * o + u] + x[u] * hnr[u])
            x[2 * o + u] = nv
            hr[u] = (hp[u] - nv) * x[o + u] + nv


@numba.njit(**KW)
def gru_bwd(act, hn, h_prev, dh, dxg, dhg, direct):
    n, o = hn.shape
    for r in range(n):
        for u in range(o):
            rv, zv, nv = act[r, u], act[r, o + u], act[r, 2 * o + u]
            g = dh[r, u]
            dn = g * (one - zv) * (one - nv * nv)
            dz = g * (h_prev[r, u] - nv) * zv * (one - zv)
            dr = dn * hn[r, u] * rv * (one - rv)
            dxg[r, u] = dr
            dxg[r, o + u] = dz
            dxg[r, 2 * o + u] = dn
            dhg[r, u] = dr
            dhg[r, o + u] = dz
            dhg[r, 2 * o + u] = dn * rv
            direct[r, u] = g * zv

