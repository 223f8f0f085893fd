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

Truncation: :math:`U = Q_P[:, :K]`, the first :math:`K` columns.  Only those columns are computed
(:func:`two_design_columns`): the basis vectors :math:`e_0..e_{K-1}` are product states, and they stay
products through the leading layer and the first even sublayer, so only small per-site and per-pair
vectors are formed before the state is expanded; the remaining sublayers are Kronecker products over
chunks of at most ``FUSED_STATES`` states, each chunk one small dense operator (gates and CZ signs
multiplied out, :func:`chunk_plan`) contracted with the state.  Cost :math:`O(L\,N\,K\log_2 N)` up to the
chunk size; no :math:`N\times N` matrix is formed.

The gate-application core :func:`apply_two_design` is shared with the generalized-node mapping
(:mod:`qpeft.unitary.node`), where qubits become :math:`M`-level sites.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

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


def sign_node(n_sites: int, pairs: Sequence[int], site_size: int = 2) -> Tensor:
    """``Tensor[site_size**n_sites]`` of :math:`\\pm1`: the diagonal of the pair sign nodes on sites
    ``(j, j + 1)``, ``j`` in ``pairs``.

    The node on sites with digits :math:`(a,b)` is :math:`(-1)^{\\mathrm{popcount}(a\\wedge b)}`
    (bitwise AND), which is exactly CZ for ``site_size=2``.
    """
    index = torch.arange(site_size**n_sites)
    digits = [(index // site_size ** (n_sites - 1 - j)) % site_size for j in range(n_sites)]
    signs = torch.ones(site_size**n_sites)
    for j in pairs:
        both = digits[j] & digits[j + 1]
        parity = sum((both >> b) & 1 for b in range((site_size - 1).bit_length()))
        signs = signs * (1 - 2 * (parity % 2))
    return signs


#: sites fused into one pass over the state: one dense operator on at most this many states
FUSED_STATES = 16


@dataclass(frozen=True)
class _Chunk:
    """Consecutive sites ``first .. first + sites - 1`` acted on by one dense ``M^sites x M^sites`` operator: the
    product of ``steps`` (applied in order), each ``(gates, pairs)``: the gate index of every site (``None``:
    idle) and the local offsets ``j`` of the pairs ``(j, j + 1)`` whose sign node acts first."""

    first: int
    sites: int
    steps: tuple[tuple[tuple[int | None, ...], tuple[int, ...]], ...]


def _chunks(n_sites: int, pair_starts: set[int], fuse: int) -> list[tuple[int, int]]:
    """``(first, sites)`` of consecutive groups of at most ``fuse`` sites (at least one block) that never cut a
    pair ``(j, j + 1)``, ``j`` in ``pair_starts``."""
    chunks: list[tuple[int, int]] = []
    site = 0
    while site < n_sites:
        block = 2 if site in pair_starts else 1
        if chunks and chunks[-1][1] + block <= fuse and chunks[-1][0] + chunks[-1][1] == site:
            chunks[-1] = (chunks[-1][0], chunks[-1][1] + block)
        else:
            chunks.append((site, block))
        site += block
    return chunks


@functools.cache
def chunk_plan(n_sites: int, layers: int, site_size: int, start: int = 0) -> tuple[tuple[_Chunk, ...], ...]:
    """The sublayers of :func:`two_design_schedule` from ``start`` on, as passes of :class:`_Chunk` s.

    A sublayer (its sign node included) is a Kronecker product over chunks that do not cut its pairs;
    consecutive sublayers with the same chunks are multiplied into one pass (the leading layer and the first
    even sublayer: for ``L = 1`` two passes over the state instead of three, and no separate sign passes).
    """
    fuse = max(1, int(math.log(FUSED_STATES) / math.log(site_size) + 1e-9))
    schedule = two_design_schedule(n_sites, layers)
    g = sum(len(sites) for _, sites in schedule[:start])
    passes: list[tuple[list[tuple[int, int]], list[list]]] = []
    for row, sites in schedule[start:]:
        index = {site: g + j for j, site in enumerate(sites)}
        g += len(sites)
        pair_starts = set(sites[::2]) if row is not None else set()
        chunks = _chunks(n_sites, pair_starts, fuse)
        steps = [(tuple(index.get(s) for s in range(first, first + size)),
                  tuple(s - first for s in range(first, first + size) if s in pair_starts)) for first, size in chunks]
        if passes and passes[-1][0] == chunks:
            for chunk_steps, step in zip(passes[-1][1], steps):
                chunk_steps.append(step)
        else:
            passes.append((chunks, [[step] for step in steps]))
    return tuple(
        tuple(_Chunk(first, size, tuple(chunk_steps)) for (first, size), chunk_steps in zip(chunks, steps)
              if any(g is not None for gates, _ in chunk_steps for g in gates))
        for chunks, steps in passes
    )


@functools.cache
def _chunk_signs(sites: int, pairs: tuple[int, ...], site_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`sign_node` of a chunk, cached per dtype and device."""
    return sign_node(sites, pairs, site_size).to(dtype=dtype, device=device)


def _kron(a: Tensor, b: Tensor) -> Tensor:
    """Batched Kronecker product of ``a[..., p, p]`` and ``b[..., q, q]``."""
    return (a[..., :, None, :, None] * b[..., None, :, None, :]).flatten(-4, -3).flatten(-2, -1)


def _chunk_operator(gates: Tensor, chunk: _Chunk, eye: Tensor) -> Tensor:
    """``Tensor[..., d, d]``: the chunk's steps multiplied out, each the Kronecker product of its site gates
    (``eye``, the site identity, where idle) times its sign node (acting first)."""
    site_size = gates.shape[-1]
    op = None
    for sites, pairs in chunk.steps:
        step = None
        for g in sites:
            factor = eye if g is None else gates[..., g, :, :]
            step = factor if step is None else _kron(step, factor)
        if pairs:
            step = step * _chunk_signs(chunk.sites, pairs, site_size, gates.dtype, gates.device)
        op = step if op is None else step @ op
    return op


def apply_two_design(gates: Tensor, x: Tensor, n_sites: int, layers: int, start: int = 0) -> Tensor:
    """The Eq. 2 circuit times ``x``: ``gates[..., G, M, M]`` (schedule order), ``x[..., N, m]``.

    ``G = two_design_gate_count(n_sites, layers)``, ``N = M**n_sites``; leading batch shapes of
    ``gates`` and ``x`` broadcast.  ``start > 0`` skips the first ``start`` sublayers of
    :func:`two_design_schedule` (``x`` is then the state after them).  The sublayers run as the passes of
    :func:`chunk_plan`: per chunk one small dense operator (gates and sign nodes multiplied out) contracted
    with the chunk's sites in one einsum.  Cost :math:`O(L\\,N\\,m\\,\\text{FUSED\\_STATES}\\log_M N)`.
    """
    site_size = gates.shape[-1]
    batch = torch.broadcast_shapes(gates.shape[:-3], x.shape[:-2])
    x = x.expand(*batch, *x.shape[-2:])
    eye = torch.eye(site_size, dtype=gates.dtype, device=gates.device)
    for chunks in chunk_plan(n_sites, layers, site_size, start):
        for chunk in chunks:
            view = x.reshape(*batch, site_size**chunk.first, site_size**chunk.sites, -1)
            x = torch.einsum("...ij,...pjq->...piq", _chunk_operator(gates, chunk, eye), view).reshape(x.shape)
    return x


def two_design_columns(gates: Tensor, n_sites: int, layers: int, k: int) -> Tensor:
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
        pair = _chunk_signs(2, (0,), site_size, joint.dtype, joint.device)  # cached: no host copy per forward
        joint = joint * pair.view(site_size, site_size, 1)  # D acts first
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
    return apply_two_design(gates, state, n_sites, layers, start)


def ry(theta: Tensor) -> Tensor:
    """``Tensor[..., 2, 2]``: :math:`R_Y(\\theta)` of Eq. 1, element-wise over ``theta[...]``."""
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def pauli_apply(theta: Tensor, x: Tensor, n_qubits: int, layers: int) -> Tensor:
    """:math:`Q_P(\\theta)\\,x` for ``theta[..., P]`` and any ``x[..., 2**n_qubits, m]``."""
    return apply_two_design(ry(theta), x, n_qubits, layers)


def pauli_columns(theta: Tensor, n_qubits: int, layers: int, k: int) -> Tensor:
    """``Tensor[..., 2**n_qubits, k]``: the first ``k`` columns of :math:`Q_P(\\theta)` (batched over ``...``)."""
    return two_design_columns(ry(theta), n_qubits, layers, k)


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
        self.reset_parameters()

    @staticmethod
    def num_parameters(n: int, k: int, layers: int = 1, init_std: float = math.pi / 2) -> int:
        check_real("init_std", init_std, 0.0)
        return two_design_gate_count(site_count(n), check_int("layers", layers, 0))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.theta.normal_(0.0, self.init_std)

    def forward(self) -> Tensor:
        return pauli_columns(self.theta, self.n_qubits, self.layers, self.k)

    def matmul(self, x: Tensor) -> Tensor:
        """:math:`Q_P x` with the whole ``n x n`` orthogonal matrix, for ``x[..., n, m]``."""
        return pauli_apply(self.theta, x, self.n_qubits, self.layers)

    def batch_key(self) -> Hashable:
        return (type(self), self.n, self.k, self.layers)

    @staticmethod
    def stacked_theta(mappings: Sequence[PauliMap]) -> Tensor:
        """``Tensor[B, P]``: the angles of equal-shape mappings, stacked (differentiable)."""
        return torch.stack([m.theta for m in mappings])

    @classmethod
    def forward_batched(cls, mappings: Sequence[PauliMap]) -> Tensor:
        first = mappings[0]
        return pauli_columns(cls.stacked_theta(mappings), first.n_qubits, first.layers, first.k)

    @classmethod
    def matmul_batched(cls, mappings: Sequence[PauliMap], x: Tensor) -> Tensor:
        first = mappings[0]
        return pauli_apply(cls.stacked_theta(mappings), x, first.n_qubits, first.layers)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}, layers={self.layers}"
