"""Square Attack (Andriushchenko, Croce, Flammarion, Hein; ECCV 2020): score-based, no gradients.

Random search on the margin loss  m(x) = z_y(x) - max_{i!=y} z_i(x)  (minimised; m <= 0 means
misclassified). Each query proposes a change of the current best perturbation inside a random
square window of side s = round(sqrt(p * H * W)), and keeps it if the margin drops. The window
fraction p follows the paper's piecewise-constant schedule, rescaled to the query budget
(iteration i counts as i * 10000 / n_queries), starting at p_init = 0.8 as AutoAttack does.

* L-inf: start from vertical stripes of +-eps; a proposal sets the whole window, per channel,
  to +-eps (projected through the fused L-inf step op with a zero gradient).
* L2: start from a grid of +-eta(s) blobs scaled to norm eps; a proposal moves the mass of a
  second window into the first and adds a fresh +-eta(s) blob there, then rescales the whole
  perturbation to norm eps (box-clipped through the fused L2 step op).

Because it never looks at a gradient, Square is the check against gradient masking: if it
fools samples that white-box attacks could not, those white-box numbers are not trustworthy.
Window positions are drawn per image. ``n_queries`` counts every model evaluation per sample,
the initial point included.
"""
from __future__ import annotations

import math

import torch

from .base import Attack, margin_loss


def p_schedule(p_init: float, it: int, n_queries: int) -> float:
    """Fraction of the image a square covers at iteration ``it`` (the paper's schedule for
    10000 queries, rescaled to ``n_queries``)."""
    i = int(it / n_queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if i <= bound:
            return p_init / div
    return p_init / 512


def _rectangles(rows: int, cols: int, device) -> torch.Tensor:
    """Concentric rectangles centred in a rows x cols patch, ring k weighted 1/(k+1)^2, unit norm."""
    out = torch.zeros(rows, cols, device=device)
    r0, c0 = rows // 2, cols // 2
    for k in range(max(r0 + 1, c0 + 1)):
        out[max(r0 - k, 0):min(r0 + k + 1, rows), max(c0 - k, 0):min(c0 + k + 1, cols)] += 1.0 / (k + 1) ** 2
    return out / out.norm()


def eta_pattern(s: int, device) -> torch.Tensor:
    """The L2 proposal blob: +rectangles on the top half, -rectangles on the bottom, unit norm."""
    out = torch.zeros(s, s, device=device)
    out[: s // 2] = _rectangles(s // 2, s, device) if s // 2 > 0 else 0
    out[s // 2:] = -_rectangles(s - s // 2, s, device)
    return out / out.norm()


class Square(Attack):
    """Untargeted Square attack on the margin loss, L-inf or L2.

    ``restarts`` > 1 reruns the search on samples not yet fooled. ``generator`` seeds every
    random draw. After a call, ``queries_used`` holds the per-sample number of queries.
    """

    def __init__(self, model, eps, norm="Linf", n_queries=5000, p_init=0.8, restarts=1, lo=0.0, hi=1.0,
                 generator=None):
        super().__init__(model, eps, norm, lo, hi)
        if n_queries < 1:
            raise ValueError(f"Square n_queries must be >= 1 (got {n_queries})")
        if not 0.0 < p_init <= 1.0:
            raise ValueError(f"Square p_init must be in (0, 1] (got {p_init})")
        if restarts < 1:
            raise ValueError(f"Square restarts must be >= 1 (got {restarts})")
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.restarts = int(restarts)
        self.generator = generator
        self.queries_used = None

    # ---- random draws -----------------------------------------------------------------
    def _signs(self, shape, device):
        return torch.randint(0, 2, shape, generator=self.generator, device=device).float() * 2 - 1

    def _corners(self, n, limit, device):
        """Per-image top-left coordinates in [0, limit] inclusive."""
        return torch.randint(0, limit + 1, (n,), generator=self.generator, device=device)

    @staticmethod
    def _window_mask(top, left, s, h, w):
        rows = torch.arange(h, device=top.device)
        cols = torch.arange(w, device=top.device)
        r = (rows >= top[:, None]) & (rows < top[:, None] + s)
        c = (cols >= left[:, None]) & (cols < left[:, None] + s)
        return (r[:, None, :, None] & c[:, None, None, :]).float()  # (n, 1, h, w)

    @staticmethod
    def _window_index(top, left, s):
        ar = torch.arange(s, device=top.device)
        n = torch.arange(top.numel(), device=top.device)[:, None, None]
        return n, (top[:, None] + ar)[:, :, None], (left[:, None] + ar)[:, None, :]

    def _margin(self, x, y):
        with torch.no_grad():
            return margin_loss(self.model(x), y)

    def _project_(self, delta, x):
        self.step_(delta, torch.zeros_like(delta), x, 0.0)  # zero-gradient step: ball + box only
        return delta

    # ---- L-inf ------------------------------------------------------------------------
    def _init_linf(self, x):
        n, c, h, w = x.shape
        delta = self.eps * self._signs((n, c, 1, w), x.device).expand(n, c, h, w).contiguous()
        return self._project_(delta, x)

    def _propose_linf(self, x, delta, it):
        n, c, h, w = x.shape
        p = p_schedule(self.p_init, it, self.n_queries)
        s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
        mask = self._window_mask(self._corners(n, h - s, x.device), self._corners(n, w - s, x.device), s, h, w)
        new = delta + mask * (2 * self.eps) * self._signs((n, c, 1, 1), x.device)
        return self._project_(new, x)

    # ---- L2 ---------------------------------------------------------------------------
    def _eta_batch(self, n, s, device):
        """(n, 1, s, s) blobs, each randomly transposed."""
        e = eta_pattern(s, device)
        flip = torch.rand(n, generator=self.generator, device=device) < 0.5
        return torch.where(flip[:, None, None], e.t()[None], e[None])[:, None]

    def _l2_normalise(self, delta):
        norms = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.dim() - 1))
        return delta / (norms + 1e-12)

    def _init_l2(self, x):
        n, c, h, w = x.shape
        s = max(h // 5, 1)
        start = (h - s * 5) // 2 if h >= 5 else 0
        delta = torch.zeros_like(x)
        for i in range(h // s):
            for j in range(w // s):
                r, q = start + i * s, start + j * s
                if r + s > h or q + s > w:
                    continue
                delta[:, :, r:r + s, q:q + s] += self._eta_batch(n, s, x.device) * self._signs((n, c, 1, 1), x.device)
        delta = self.eps * self._l2_normalise(delta)
        return self._project_(delta, x)

    def _propose_l2(self, x, delta, it):
        n, c, h, w = x.shape
        p = p_schedule(self.p_init, it, self.n_queries)
        s = max(int(round(math.sqrt(p * h * w))), 3)
        if s % 2 == 0:
            s += 1
        s = min(s, h, w)
        t1, l1 = self._corners(n, h - s, x.device), self._corners(n, w - s, x.device)
        t2, l2 = self._corners(n, h - s, x.device), self._corners(n, w - s, x.device)
        union = torch.maximum(self._window_mask(t1, l1, s, h, w), self._window_mask(t2, l2, s, h, w))
        d_hwc = delta.permute(0, 2, 3, 1)  # (n, h, w, c) view for per-image window indexing
        i1 = self._window_index(t1, l1, s)
        win1 = d_hwc[i1].permute(0, 3, 1, 2)  # (n, c, s, s)
        win1_norm = win1.flatten(2).norm(dim=2)[:, :, None, None]
        image_norm = delta.flatten(1).norm(dim=1)[:, None, None, None]
        union_norm = (delta * union).flatten(1).norm(dim=1)[:, None, None, None]

        new_win = self._eta_batch(n, s, x.device) * self._signs((n, c, 1, 1), x.device) + win1 / (win1_norm + 1e-12)
        # the window takes its old mass plus the budget still unused, spread over channels
        target_sq = (self.eps ** 2 - image_norm ** 2).clamp_min(0) / c + union_norm ** 2
        new_win = new_win / (new_win.flatten(2).norm(dim=2)[:, :, None, None] + 1e-12) * target_sq.sqrt()

        out = delta.clone()
        o_hwc = out.permute(0, 2, 3, 1)
        o_hwc[self._window_index(t2, l2, s)] = 0.0
        o_hwc[i1] = new_win.permute(0, 2, 3, 1)
        out = self.eps * self._l2_normalise(out)
        return self._project_(out, x)

    # ---- the search -------------------------------------------------------------------
    def single_run(self, x, y):
        """One search. Returns (x_adv, fooled, queries per sample)."""
        init, propose = (self._init_linf, self._propose_linf) if self.norm == "Linf" else (self._init_l2,
                                                                                          self._propose_l2)
        delta = init(x)
        margin = self._margin(x + delta, y)
        queries = torch.ones(x.shape[0], device=x.device)
        for it in range(self.n_queries - 1):
            act = (margin > 0).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            xa, da = x[act], delta[act]
            cand = propose(xa, da, it)
            m = self._margin(xa + cand, y[act])
            queries[act] += 1
            take = m < margin[act]  # lower margin: better (also covers newly misclassified)
            delta[act] = torch.where(take.view(-1, *[1] * (x.dim() - 1)), cand, da)
            margin[act] = torch.where(take, m, margin[act])
        return (x + delta).detach(), margin <= 0, queries

    def forward(self, x, y):
        x = x.detach().float()
        if x.dim() != 4:
            raise ValueError(f"Square expects images shaped (N, C, H, W), got {tuple(x.shape)}")
        adv = x.clone()
        self.queries_used = torch.zeros(x.shape[0], device=x.device)
        with torch.no_grad():
            fooled = self.model(x).argmax(1) != y
        if self.eps == 0:
            return adv
        for _ in range(self.restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv_r, fooled_r, q = self.single_run(x[idx], y[idx])
            self.queries_used[idx] += q
            # keep the restart's point only where it fools (a non-fooling search point has no
            # value over the clean input for the caller)
            adv[idx[fooled_r]] = adv_r[fooled_r]
            fooled[idx[fooled_r]] = True
        return adv
