r"""Generalized nodes (Fig. 2b): the Eq. 2 circuit on :math:`M`-level sites, :math:`N = M^q`.

Every single-qubit :math:`R_Y` of the Pauli circuit (:mod:`qpeft.unitary.pauli`) becomes an
:math:`M\times M` orthogonal node

.. math:: G = \exp(A),\qquad A = \mathcal L - \mathcal L^\top,

with :math:`\mathcal L` strictly lower-triangular holding the node's :math:`M(M-1)/2` Lie parameters
(row-major order of ``torch.tril_indices(M, M, -1)``).  Every CZ becomes the fixed
:math:`M^2\times M^2` diagonal sign node

.. math:: D\,|a,b\rangle = (-1)^{\mathrm{popcount}(a\,\wedge\,b)}\,|a,b\rangle,

i.e. a CZ between each pair of equal-weight bits of the two digits; for :math:`M=2` it *is* CZ.
The alternative "−1 on :math:`|M{-}1,M{-}1\rangle` only" is not used: for :math:`M\ge3` it commutes with
the :math:`\mathfrak{so}(M-1)` rotations of levels :math:`0..M-2` of either site, so those directions of
consecutive nodes on a site merge and the parameters become redundant (rank-deficient Jacobian).  The
bitwise sign node has pairwise distinct rows and columns, so no local rotation commutes with it.

Layout follows Eq. 2 exactly: a leading layer of :math:`q` nodes, then :math:`L` layers of an even
sublayer (sites :math:`(1,2),(3,4),\dots`) and an odd sublayer (sites :math:`(2,3),\dots`), each pair
being :math:`(G\otimes G')\,D` with :math:`D` acting first.  Trainable count, for every :math:`q\ge1`
(for :math:`q=1` there is one node and no pair):

.. math:: \#\theta = \big[(2L+1)\,q - 2L\big]\cdot\frac{M(M-1)}{2}.

With :math:`M=2`, the node parameter :math:`a` gives :math:`\exp\begin{psmallmatrix}0&-a\\a&0\end{psmallmatrix}
= R_Y(2a)`, so ``node`` reproduces ``pauli`` with :math:`\theta = 2a`.  Truncation :math:`U = Q[:, :K]`;
the first :math:`K` columns are computed as for Pauli (:func:`qpeft.unitary.pauli.two_design_columns`), plus
one batched ``matrix_exp`` over all nodes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qpeft.unitary.base import StiefelMap, check_int, check_real, register_mapping
from qpeft.unitary.pauli import apply_two_design, site_count, two_design_columns, two_design_gate_count


def skew_from_params(theta: Tensor, node_size: int) -> Tensor:
    """``Tensor[..., M, M]``: :math:`\\mathcal L-\\mathcal L^\\top` from ``theta[..., M(M-1)/2]``."""
    rows, cols = torch.tril_indices(node_size, node_size, -1, device=theta.device)
    lower = theta.new_zeros(*theta.shape[:-1], node_size, node_size)
    lower[..., rows, cols] = theta
    return lower - lower.transpose(-1, -2)


def node_gates(theta: Tensor, node_size: int) -> Tensor:
    """``Tensor[..., G, M, M]``: the nodes :math:`\\exp(\\mathcal L-\\mathcal L^\\top)` of ``theta[..., G, M(M-1)/2]``.

    The tiny ``M x M`` exponentials run in float64 (single precision leaves ~1e-7 of non-orthogonality
    per node, which accumulates over the circuit), then are cast back to ``theta``'s dtype.
    """
    return torch.linalg.matrix_exp(skew_from_params(theta, node_size).to(torch.float64)).to(theta.dtype)


def node_apply(theta: Tensor, x: Tensor, node_size: int, n_sites: int, layers: int) -> Tensor:
    """The node circuit times ``x[..., M**q, m]``; ``theta[..., G, M(M-1)/2]`` in schedule order."""
    return apply_two_design(node_gates(theta, node_size), x, n_sites, layers)


def node_columns(theta: Tensor, node_size: int, n_sites: int, layers: int, k: int) -> Tensor:
    """``Tensor[..., M**q, k]``: the first ``k`` columns of the node circuit (batched over ``...``)."""
    return two_design_columns(node_gates(theta, node_size), n_sites, layers, k)


def _check_node_size(node_size: object) -> int:
    if isinstance(node_size, bool) or not isinstance(node_size, int) or node_size < 2:
        raise ValueError(f"node_size must be an integer >= 2, got {node_size!r}")
    return node_size


@register_mapping("node")
class NodeMap(StiefelMap):
    r"""``U = Q[:, :k]`` of the SO(M)-node circuit; :math:`[(2L+1)q-2L]\,M(M-1)/2` parameters.

    Options: ``node_size`` (:math:`M\ge2`, default 2; ``n`` must be a power of it), ``layers``
    (:math:`L\ge0`, default 1), ``init_std`` (default :math:`\pi/4`, the Pauli default :math:`\pi/2`
    halved by the angle convention :math:`\theta=2a`): Lie parameters :math:`\sim\mathcal N(0,\text{init\_std}^2)`.
    """

    OPTIONS = {"node_size": 2, "layers": 1, "init_std": math.pi / 4}

    def __init__(
        self, n: int, k: int, *, node_size: int = 2, layers: int = 1, init_std: float = math.pi / 4
    ) -> None:
        super().__init__(n, k)
        self.node_size = _check_node_size(node_size)
        self.n_sites = site_count(n, node_size, option="node_size")
        self.layers = check_int("layers", layers, 0)
        self.init_std = check_real("init_std", init_std, 0.0)
        gates = two_design_gate_count(self.n_sites, self.layers)
        self.theta = nn.Parameter(torch.empty(gates, node_size * (node_size - 1) // 2))
        self.reset_parameters()

    @staticmethod
    def num_parameters(
        n: int, k: int, node_size: int = 2, layers: int = 1, init_std: float = math.pi / 4
    ) -> int:
        check_real("init_std", init_std, 0.0)
        size = _check_node_size(node_size)
        gates = two_design_gate_count(site_count(n, size, option="node_size"), check_int("layers", layers, 0))
        return gates * size * (size - 1) // 2

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.theta.normal_(0.0, self.init_std)

    def forward(self) -> Tensor:
        return node_columns(self.theta, self.node_size, self.n_sites, self.layers, self.k)

    def matmul(self, x: Tensor) -> Tensor:
        """:math:`Q x` with the whole ``n x n`` orthogonal matrix, for ``x[..., n, m]``."""
        return node_apply(self.theta, x, self.node_size, self.n_sites, self.layers)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}, node_size={self.node_size}, layers={self.layers}"
