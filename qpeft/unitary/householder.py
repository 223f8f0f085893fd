r"""Householder mapping: the canonical coset decomposition (method.md §8, Eq. 5).

.. math::
    Q_H = \prod_{j=1}^{K}\bigl(I - 2\,v_jv_j^\top\bigr),\qquad v_j = \ell_j/\|\ell_j\|,
    \qquad U = Q_H[:, :K],

where :math:`\ell_j\in\mathbb R^n` is zero above row :math:`j` (0-indexed, entries
:math:`j..n-1`).  A direction in :math:`\mathbb R^{n-j}` has :math:`n-j-1` degrees of freedom, so
the leading entry is fixed, :math:`\ell_{jj} = 1` (the LAPACK convention), and the free entries are
:math:`\ell_{ij},\ i > j`.  Count:

.. math:: \sum_{j<K} (n - j - 1) = nK - \tfrac{K(K+1)}{2} = \dim\mathrm{St}(n, K),

and the Jacobian is full rank at generic points.  At ``init_std -> 0`` every reflection maps
:math:`e_j \mapsto -e_j`, so U starts near :math:`-I[:, :K]` (the sign is irrelevant to
:math:`U\Lambda V^\top` with :math:`\lambda = 0`).

The product is applied to the K basis columns in compact WY form (Schreiber–Van Loan; the
"UT transform"): :math:`Q_H = I - VTV^\top` with :math:`T^{-1} = \mathrm{triu}_{+1}(V^\top V) +
\tfrac12 I`, so :math:`U = X - V\,T\,(V^\top X)` costs :math:`O(nK^2 + K^3)`, one triangular
solve and no loop over reflections.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from qpeft.unitary.base import register_mapping
from qpeft.unitary.lie import DEFAULT_INIT_STD, LowerEntries


def householder_columns(vectors: Tensor, k: int) -> Tensor:
    r""":math:`(\prod_j H_j)[..., :, :k]` for the columns :math:`\ell_j` of ``vectors: [..., n, K]``.

    Entries above row ``j`` of column ``j`` are ignored; each column must be nonzero on or below
    row ``j``.  Returns ``[..., n, k]`` with orthonormal columns.
    """
    v = torch.tril(vectors)
    # the norm is accumulated in float64: a float32 sum of n squares drifts by ~sqrt(n) eps
    v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True, dtype=torch.float64).to(v.dtype)
    reflections = v.shape[-1]
    t_inv = torch.triu(v.mT @ v, diagonal=1)
    t_inv = t_inv + 0.5 * torch.eye(reflections, dtype=v.dtype, device=v.device)
    vtx = v[..., :k, :].mT  # Vᵀ I[:, :k]
    z = torch.linalg.solve_triangular(t_inv, vtx, upper=True)
    eye = torch.eye(v.shape[-2], k, dtype=v.dtype, device=v.device)
    return eye - v @ z


@register_mapping("householder")
class HouseholderMapping(LowerEntries):
    r"""Product of K Householder reflections applied to :math:`I[:, :K]`.

    :math:`\ell_j = e_j + \sum_{i>j}\theta_{ij}e_i`, :math:`\theta_{ij}\sim\mathcal N(0,
    \sigma^2)` with :math:`\sigma` = ``init_std``.
    Options: ``init_std`` (0.01).  Count: :math:`nK - K(K+1)/2`.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"init_std": DEFAULT_INIT_STD}  # K' = K: no intrinsic_rank

    def __init__(self, n: int, k: int, init_std: float = DEFAULT_INIT_STD) -> None:
        super().__init__(n, k, init_std=init_std)

    def vectors(self) -> Tensor:
        """The unnormalised :math:`\\ell_j` as an ``n x K`` matrix (unit leading entries)."""
        block = self.theta_block()
        return block + torch.eye(self.n, self.k, dtype=block.dtype, device=block.device)

    def forward(self) -> Tensor:
        return householder_columns(self.vectors(), self.k)
