r"""Pauli parameterization (Eq. 2): an alternating RY/CZ circuit on :math:`n=\log_2 N` qubits.

The RY gate (Eq. 1) is the real rotation

.. math:: R_Y(\theta)=\exp(-\tfrac{i\theta}{2}Y)
          =\begin{pmatrix}\cos\frac\theta2&-\sin\frac\theta2\\ \sin\frac\theta2&\cos\frac\theta2\end{pmatrix},

and the two-qubit block is :math:`B(\alpha,\beta)=(R_Y(\alpha)\otimes R_Y(\beta))\,\mathrm{CZ}` (CZ acts
first).  Qubits are numbered :math:`1..n`, qubit 1 being the most significant Kronecker factor.
The circuit applies, in this order,

1. a leading layer :math:`\bigotimes_{i=1}^n R_Y(\theta_{0,i})`;
2. :math:`L` layers, each an *even* sublayer of blocks on qubit pairs :math:`(1,2),(3,4),\dots`
   followed by an *odd* sublayer of blocks on pairs :math:`(2,3),(4,5),\dots`.

Both parities of :math:`n` are supported (for even :math:`n` the odd sublayer leaves qubits 1 and
:math:`n` idle; for odd :math:`n` the even sublayer leaves qubit :math:`n` idle).  A layer holds
:math:`2(n-1)` angles, so the trainable count is

.. math:: \#\theta = n + 2L(n-1) = (2L+1)\,n - 2L .

For :math:`N=2` (one qubit) the layers contain no pair, hence no gate and no angle: the circuit is the
single rotation :math:`R_Y(\theta_0)` and the formula gives 1 for every :math:`L`.

Truncation: :math:`U = Q_P[:, :K]`, the first :math:`K` columns.  Only those columns are computed: the
basis vectors :math:`e_0..e_{K-1}` are reshaped to a :math:`(2,)^n\times K` tensor, each RY is a
:math:`2\times2` contraction along its qubit axis and each CZ sublayer is a fixed :math:`\pm1` sign
vector, for a cost of :math:`O(L\,N\,K\log_2 N)`; no :math:`N\times N` matrix is formed.

The gate-application core :func:`apply_two_design` is shared with the generalized-node mapping
(:mod:`qpeft.unitary.node`), where qubits become :math:`M`-level sites.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor, nn

from qpeft.unitary.base import StiefelMap, check_int, check_real, register_mapping

Schedule = list[tuple[int | None, list[int]]]


def site_count(n: int, site_size: int = 2, option: str | None = None) -> int:
    """:math:`q\\ge1` with :math:`n = \\text{site\\_size}^q`; ``ValueError`` (naming ``option``) otherwise."""
    q, size = 0, 1
    while size < n:
        size, q = size * site_size, q + 1
    if size != n or q == 0:
        detail = f"a power of {option}={site_size} (>= {option})" if option else f"a power of {site_size} (>= {site_size})"
        raise ValueError(f"n must be {detail}, got n={n!r}")
    return q


def two_design_schedule(n_sites: int, layers: int) -> Schedule:
    """Sublayers of Eq. 2 in application order: ``(sign row or None, sites that get a gate)``.

    Row 0 of the sign table belongs to the even sublayer, row 1 to the odd one; sites are 0-indexed.
    Sublayers without any pair are omitted.
    """
    schedule: Schedule = [(None, list(range(n_sites)))]
    even = list(range(2 * (n_sites // 2)))
    odd = list(range(1, 1 + 2 * ((n_sites - 1) // 2)))
    for _ in range(layers):
        schedule += [(row, sites) for row, sites in ((0, even), (1, odd)) if sites]
    return schedule


def two_design_gate_count(n_sites: int, layers: int) -> int:
    """Number of single-site gates of Eq. 2: :math:`(2L+1)q - 2L`."""
    return (2 * layers + 1) * n_sites - 2 * layers


def pair_signs(site_size: int = 2) -> Tensor:
    """``Tensor[M, M]``: the sign node of one pair, :math:`(-1)^{\\mathrm{popcount}(a\\wedge b)}` at digits ``(a, b)``."""
    return two_design_signs(2, site_size)[0].view(site_size, site_size)


def two_design_signs(n_sites: int, site_size: int = 2) -> Tensor:
    """``Tensor[2, site_size**n_sites]`` of :math:`\\pm1`: the diagonal of the even / odd entangling sublayer.

    The pair gate on sites with digits :math:`(a,b)` is :math:`(-1)^{\\mathrm{popcount}(a\\wedge b)}`
    (bitwise AND), which is exactly CZ for ``site_size=2``.
    """
    n = site_size**n_sites
    index = torch.arange(n)
    digits = [(index // site_size ** (n_sites - 1 - j)) % site_size for j in range(n_sites)]
    signs = torch.ones(2, n)
    for row in (0, 1):
        for j in range(row, n_sites - 1, 2):
            both = digits[j] & digits[j + 1]
            parity = sum((both >> b) & 1 for b in range((site_size - 1).bit_length()))
            signs[row] *= 1 - 2 * (parity % 2)
    return signs


#: sites fused into one pass over ``x``: their gates' Kronecker product (at most this many states)
FUSED_STATES = 16
_LETTERS = "abcdefghijklmnopqrstuvwx"


def _gates_on_sites(gates: list[Tensor], x: Tensor, first: int, site_size: int) -> Tensor:
    """Apply ``gates[j][..., M, M]`` to site ``first + j`` of ``x[..., N, m]`` in one einsum.

    torch contracts the small gates first (their Kronecker product), then makes one pass over ``x``:
    fewer passes over the large tensor than one contraction per site (about 2x faster when batched).
    """
    count = len(gates)
    view = x.reshape(*x.shape[:-2], site_size**first, *([site_size] * count), -1)
    outs, ins = _LETTERS[:count], _LETTERS[count : 2 * count]
    equation = ",".join(f"...{o}{i}" for o, i in zip(outs, ins)) + f",...y{ins}z->...y{outs}z"
    return torch.einsum(equation, *gates, view).reshape(x.shape)


def apply_two_design(gates: Tensor, x: Tensor, signs: Tensor, n_sites: int, layers: int, start: int = 0) -> Tensor:
    """The Eq. 2 circuit times ``x``: ``gates[..., G, M, M]`` (schedule order), ``x[..., N, m]``.

    ``G = two_design_gate_count(n_sites, layers)``, ``N = M**n_sites``; leading batch shapes of
    ``gates`` and ``x`` broadcast.  Consecutive sites of a sublayer are applied together
    (``FUSED_STATES``).  Cost :math:`O(G\\,N\\,m\\,M)` up to the fusion factor.  ``start > 0`` skips the
    first ``start`` sublayers of :func:`two_design_schedule` (``x`` is then the state after them).
    """
    site_size = gates.shape[-1]
    fuse = max(1, int(math.log(FUSED_STATES) / math.log(site_size) + 1e-9))
    batch = torch.broadcast_shapes(gates.shape[:-3], x.shape[:-2])
    x = x.expand(*batch, *x.shape[-2:])
    schedule = two_design_schedule(n_sites, layers)
    g = sum(len(sites) for _, sites in schedule[:start])
    for row, sites in schedule[start:]:
        if row is not None:
            x = x * signs[row].to(x.dtype).unsqueeze(-1)
        for start in range(0, len(sites), fuse):  # a sublayer's sites are consecutive
            chunk = sites[start : start + fuse]
            x = _gates_on_sites([gates[..., g + j, :, :] for j in range(len(chunk))], x, chunk[0], site_size)
            g += len(chunk)
    return x


def two_design_columns(gates: Tensor, signs: Tensor, n_sites: int, layers: int, k: int) -> Tensor:
    """``Tensor[..., N, k]``: the first ``k`` columns of the Eq. 2 circuit (``gates`` as in :func:`apply_two_design`).

    Column ``j`` starts as the basis state :math:`\\bigotimes_i e_{d_i(j)}` (``d_i(j)``: digit ``i`` of ``j``), so
    after the leading layer it is the product state :math:`\\bigotimes_i g_i[:, d_i(j)]`, and after the first
    even sublayer still a product over the pairs :math:`(2p, 2p{+}1)`, each the :math:`M^2`-vector
    :math:`(g\\otimes g')\\,D\\,(v_{2p}\\otimes v_{2p+1})`.  Only these small vectors are computed; outer products
    expand them into the ``N``-vector (about :math:`\\tfrac43 Nk` work), and :func:`apply_two_design` applies
    the remaining sublayers: for ``L = 1`` one of the three passes over the state.  Same values as
    :func:`apply_two_design` on :math:`I[:, :k]`.
    """
    site_size = gates.shape[-1]
    column = torch.arange(k, device=gates.device)
    digits = torch.stack([(column // site_size ** (n_sites - 1 - i)) % site_size for i in range(n_sites)])
    onehot = torch.nn.functional.one_hot(digits, site_size).to(gates.dtype).mT  # [q, M, k]
    sites = gates[..., :n_sites, :, :] @ onehot  # [..., q, M, k]: g_i[:, d_i(j)]
    schedule = two_design_schedule(n_sites, layers)
    start = 1
    if len(schedule) > 1 and schedule[1][0] == 0:  # the first even sublayer keeps a product over its pairs
        pairs = n_sites // 2
        first, second = sites[..., 0 : 2 * pairs : 2, :, :], sites[..., 1 : 2 * pairs : 2, :, :]
        joint = first.unsqueeze(-2) * second.unsqueeze(-3)  # [..., P, M, M, k]: v ⊗ v'
        joint = joint * pair_signs(site_size).to(joint).unsqueeze(-1)  # D acts first
        g1 = gates[..., n_sites : n_sites + 2 * pairs : 2, :, :]
        g2 = gates[..., n_sites + 1 : n_sites + 2 * pairs : 2, :, :]
        joint = torch.einsum("...ab,...cd,...bdk->...ack", g1, g2, joint).flatten(-3, -2)  # [..., P, M², k]
        blocks = list(joint.unbind(-3)) + ([sites[..., -1, :, :]] if n_sites % 2 else [])
        start = 2
    else:
        blocks = list(sites.unbind(-3))
    state = blocks[0]
    for block in blocks[1:]:
        state = (state.unsqueeze(-2) * block.unsqueeze(-3)).flatten(-3, -2)
    return apply_two_design(gates, state, signs, n_sites, layers, start)


def ry(theta: Tensor) -> Tensor:
    """``Tensor[..., 2, 2]``: :math:`R_Y(\\theta)` of Eq. 1, element-wise over ``theta[...]``."""
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def pauli_apply(theta: Tensor, x: Tensor, n_qubits: int, layers: int, signs: Tensor) -> Tensor:
    """:math:`Q_P(\\theta)\\,x` for ``theta[..., P]`` and any ``x[..., 2**n_qubits, m]``."""
    return apply_two_design(ry(theta), x, signs, n_qubits, layers)


def pauli_columns(theta: Tensor, n_qubits: int, layers: int, k: int, signs: Tensor) -> Tensor:
    """``Tensor[..., 2**n_qubits, k]``: the first ``k`` columns of :math:`Q_P(\\theta)` (batched over ``...``)."""
    return two_design_columns(ry(theta), signs, n_qubits, layers, k)


@register_mapping("pauli")
class PauliMap(StiefelMap):
    r"""``U = Q_P(θ)[:, :k]`` with :math:`(2L+1)\log_2 n - 2L` angles (see the module docstring).

    Options: ``layers`` (:math:`L\ge0`, default 1, "L can be set to 1 for PEFT");
    ``init_std`` (default :math:`\pi/2`): :math:`\theta\sim\mathcal N(0,\text{init\_std}^2)`.  At
    :math:`\theta=0` the circuit is the identity, a coordinate frame at which the Jacobian loses rank;
    a half-turn spread of the angles gives a generic frame while staying well inside one period.
    """

    OPTIONS = {"layers": 1, "init_std": math.pi / 2}

    def __init__(self, n: int, k: int, *, layers: int = 1, init_std: float = math.pi / 2) -> None:
        super().__init__(n, k)
        self.n_qubits = site_count(n)
        self.layers = check_int("layers", layers, 0)
        self.init_std = check_real("init_std", init_std, 0.0)
        self.theta = nn.Parameter(torch.empty(two_design_gate_count(self.n_qubits, self.layers)))
        self.register_buffer("signs", two_design_signs(self.n_qubits), persistent=False)
        self.reset_parameters()

    @staticmethod
    def num_parameters(n: int, k: int, layers: int = 1, init_std: float = math.pi / 2) -> int:
        check_real("init_std", init_std, 0.0)
        return two_design_gate_count(site_count(n), check_int("layers", layers, 0))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.theta.normal_(0.0, self.init_std)

    def forward(self) -> Tensor:
        return pauli_columns(self.theta, self.n_qubits, self.layers, self.k, self.signs)

    def matmul(self, x: Tensor) -> Tensor:
        """:math:`Q_P x` with the whole ``n x n`` orthogonal matrix, for ``x[..., n, m]``."""
        return pauli_apply(self.theta, x, self.n_qubits, self.layers, self.signs)

    def batch_key(self) -> Hashable:
        return (type(self), self.n, self.k, self.layers)

    @staticmethod
    def stacked_theta(mappings: Sequence[PauliMap]) -> Tensor:
        """``Tensor[B, P]``: the angles of equal-shape mappings, stacked (differentiable)."""
        return torch.stack([m.theta for m in mappings])

    @classmethod
    def forward_batched(cls, mappings: Sequence[PauliMap]) -> Tensor:
        first = mappings[0]
        return pauli_columns(cls.stacked_theta(mappings), first.n_qubits, first.layers, first.k, first.signs)

    @classmethod
    def matmul_batched(cls, mappings: Sequence[PauliMap], x: Tensor) -> Tensor:
        first = mappings[0]
        return pauli_apply(cls.stacked_theta(mappings), x, first.n_qubits, first.layers, first.signs)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}, layers={self.layers}"
