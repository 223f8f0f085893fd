r"""Givens mapping: a product of plane rotations reaching :math:`\mathrm{St}(n, K)` (method.md §8, Eq. 6).

:math:`G_{j,i}(\theta)` is the identity except for the RY block (Eq. 1) on rows/columns
:math:`(j, i)`: :math:`\begin{psmallmatrix}\cos\frac\theta2 & -\sin\frac\theta2\\
\sin\frac\theta2 & \cos\frac\theta2\end{psmallmatrix}`, so :math:`Q_G = R_Y(\theta)` at ``n = 2``.
One angle :math:`\theta_{ij}` per pair :math:`i > j`, :math:`j < K` (the same index set as the Lie
block :math:`\Theta`):

.. math::
    Q_G = C_0 C_1\cdots C_{K-1},\qquad
    C_j = G_{j,j+1}(\theta_{j+1,j})\,G_{j,j+2}(\theta_{j+2,j})\cdots G_{j,n-1}(\theta_{n-1,j}),
    \qquad U = Q_G[:, :K].

:math:`C_j` turns :math:`e_j` into any unit vector of :math:`\mathrm{span}(e_j..e_{n-1})`
(spherical coordinates), so this reaches the Stiefel manifold.  Count:
:math:`nK - K(K+1)/2 = \dim\mathrm{St}(n, K)`; at :math:`\theta = 0`, :math:`\partial U/\partial
\theta_{ij} = \tfrac12(E_{ij} - E_{ji})[:, :K]`, so the Jacobian is full rank there too.

The rotations are sequential by nature, but rotation :math:`(j, i)` can run at step
:math:`t = (n-1-i) + (K-1-j)`: rotations of one step act on disjoint row pairs and every pair of
non-commuting rotations keeps its order.  So U takes :math:`n + K - 2` vectorised steps of up to
K rotations each on the ``n x K`` block (never ``n x n``).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from qpeft.unitary.base import register_mapping
from qpeft.unitary.lie import DEFAULT_INIT_STD, LowerEntries


class GivensSchedule(NamedTuple):
    """Rotations sorted by step: rows ``first`` (j) and ``second`` (i), and step boundaries."""

    first: Tensor
    second: Tensor
    bounds: tuple[int, ...]


def givens_schedule(n: int, k: int, device: torch.device | None = None) -> GivensSchedule:
    """The parallel schedule of the ``nk - k(k+1)/2`` rotations (see the module docstring)."""
    second, first = torch.tril_indices(n, k, offset=-1, device=device)
    step = (n - 1 - second) + (k - 1 - first)
    order = torch.argsort(step, stable=True)
    counts = torch.bincount(step, minlength=max(n + k - 2, 0)).tolist()
    bounds = [0]
    for count in counts:
        bounds.append(bounds[-1] + count)
    return GivensSchedule(first[order], second[order], tuple(bounds))


def givens_columns(theta: Tensor, k: int, schedule: GivensSchedule | None = None) -> Tensor:
    r""":math:`Q_G[..., :, :k]` for angles :math:`\theta_{ij}` = ``theta[..., i, j]``, ``theta: [..., n, K]``.

    Entries on or above the diagonal are ignored.  ``schedule`` defaults to
    ``givens_schedule(n, K)``; pass a cached one to avoid rebuilding it.
    """
    n, cols = theta.shape[-2:]
    if schedule is None:
        schedule = givens_schedule(n, cols, theta.device)
    half = 0.5 * theta[..., schedule.second, schedule.first]  # [..., m] in schedule order
    cos, sin = torch.cos(half).unsqueeze(-1), torch.sin(half).unsqueeze(-1)
    y = torch.eye(n, k, dtype=theta.dtype, device=theta.device).expand(*theta.shape[:-2], n, k)
    for lo, hi in zip(schedule.bounds[:-1], schedule.bounds[1:]):
        if lo == hi:
            continue
        rows_j, rows_i = schedule.first[lo:hi], schedule.second[lo:hi]
        c, s = cos[..., lo:hi, :], sin[..., lo:hi, :]
        y_j, y_i = y[..., rows_j, :], y[..., rows_i, :]
        rotated = torch.cat([c * y_j - s * y_i, s * y_j + c * y_i], dim=-2)
        y = y.index_copy(-2, torch.cat([rows_j, rows_i]), rotated)
    return y


@register_mapping("givens")
class GivensMapping(LowerEntries):
    r"""Product of :math:`nK - K(K+1)/2` Givens (RY) rotations applied to :math:`I[:, :K]`.

    Angles :math:`\theta_{ij}\sim\mathcal N(0, \sigma^2)`, :math:`\sigma` = ``init_std``
    (``0`` gives U = I[:, :K]).  Options: ``init_std`` (0.01).  Count: :math:`nK - K(K+1)/2`.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"init_std": DEFAULT_INIT_STD}  # K' = K: no intrinsic_rank

    def __init__(self, n: int, k: int, init_std: float = DEFAULT_INIT_STD) -> None:
        super().__init__(n, k, init_std=init_std)
        schedule = givens_schedule(n, k)
        self.register_buffer("first", schedule.first, persistent=False)
        self.register_buffer("second", schedule.second, persistent=False)
        self.bounds = schedule.bounds

    def forward(self) -> Tensor:
        angles = self.theta_block()
        return givens_columns(angles, self.k, GivensSchedule(self.first, self.second, self.bounds))
