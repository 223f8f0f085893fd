r"""Tensor-network factors (paper A.3, Table 10): one side ``U`` (``N x K``, orthonormal columns) built from
small unitary nodes of a *folded* side.

A side of size :math:`N` is folded into :math:`d` factors :math:`N = n_1\cdots n_d` (option ``fold``,
default 2: the most balanced integer factorization with every :math:`n_j \ge 2`, e.g. 768 → (24, 32),
384 → (16, 24), 1024 → (32, 32); or ``factors``: the list itself, or a list of such lists of which the one
whose product is :math:`N` is used, so one option serves sides of different sizes).  Rows are indexed
row-major, :math:`x = ((x_1 n_2 + x_2) n_3 + \dots)`, the ``torch.kron`` convention.  Every node is a
registered mapping (``node``, default ``taylor``; ``node_options`` are its options; an ``intrinsic_rank``
there is capped at each node's column count :math:`k_j`, since :math:`K' \le k`).  With :math:`p(n, k)`
the node mapping's count (Taylor: :math:`nK' - K'(K'+1)/2`):

- ``cp`` (CP / Khatri–Rao): :math:`A_j \in \mathrm{St}(n_j, K)`, :math:`U = A_1 \odot \dots \odot A_d`, i.e.
  :math:`u_r = a_{1r} \otimes \dots \otimes a_{dr}`.  Orthonormal: :math:`\langle u_r, u_s\rangle =
  \prod_j \langle a_{jr}, a_{js}\rangle = \delta_{rs}`.  Needs :math:`K \le \min_j n_j`.
  Count :math:`\sum_j p(n_j, K)`.
- ``tucker`` (TD / HOSVD): :math:`A_j \in \mathrm{St}(n_j, k_j)`, :math:`\prod_j k_j = K` (``mode_ranks``,
  default the balanced factorization of :math:`K`, ascending like the factors, e.g. 16 → (4, 4)),
  :math:`U = A_1 \otimes \dots \otimes A_d` (orthonormal: Kronecker products of orthonormal columns).
  Count :math:`\sum_j p(n_j, k_j)`; the adapter's core is dense (:math:`K \times K`).
- ``htd`` (hierarchical Tucker / tree tensor network, one level): leaves :math:`A_j \in \mathrm{St}(n_j, k)`
  (``leaf_rank`` :math:`k`, default the smallest with :math:`k^d \ge K`) and a transfer node
  :math:`B \in \mathrm{St}(k^d, K)`: :math:`U = (A_1 \otimes \dots \otimes A_d)\,B`, orthonormal since
  :math:`U^\top U = B^\top (\otimes_j A_j^\top A_j) B = B^\top B = I`.  Count :math:`\sum_j p(n_j, k) + p(k^d, K)`.
- ``trd`` (tensor ring, Fig. 8): bond :math:`R`, :math:`K = R^2`.  :math:`G_1 \in \mathrm{St}(n_1, R^2)` read as
  :math:`G_1[x_1, a, b]`, :math:`G_j \in \mathrm{St}(R n_j, R)` read as :math:`G_j[b, x_j, c]` (:math:`j \ge 2`),

  .. math:: \tilde U[(x_1 \dots x_d), (c, a)] = \sum_{b, \dots} G_1[x_1, a, b]\, G_2[b, x_2, \cdot] \cdots G_d[\cdot, x_d, c].

  Orthonormal (d = 2): :math:`\sum_{x_1} G_1[x_1,a,b]G_1[x_1,a',b'] = \delta_{aa'}\delta_{bb'}` (columns of
  :math:`G_1`), so :math:`\sum_{x_1 x_2} \tilde U[\cdot,(c,a)]\tilde U[\cdot,(c',a')] = \delta_{aa'}
  \sum_{b, x_2} G_2[b,x_2,c]G_2[b,x_2,c'] = \delta_{aa'}\delta_{cc'}` (columns of :math:`G_2`); for
  :math:`d > 2` the same step repeats with each further :math:`G_j` (induction on the open bonds
  :math:`(a, c)`).  Column :math:`(c, a)` is index :math:`cR + a`.  The adapter closes the ring with the
  V side's chain (same construction) and one diagonal node :math:`\lambda \in \mathbb R^R` on bond
  :math:`a`: :math:`\Delta W = \tilde U\,\mathrm{diag}(\lambda_a)\,\tilde V^\top`.  Count
  :math:`p(n_1, R^2) + \sum_{j\ge2} p(R n_j, R)`.

TTD (MPS, the 2-mode canonical form) is the plain adapter ``U diag(λ) Vᵀ`` with U, V straight from the
node mapping, so it has no mapping here.  Every network builds only ``N x K``-sized tensors (the HTD
Kronecker product is ``N x k^d``), and builds equal-key mappings of many layers in one batched call per
node slot (``forward_batched``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from qpeft.unitary.base import (
    StiefelMap,
    build_mapping,
    check_int,
    count_mapping_parameters,
    mapping_class,
    register_mapping,
)

NETWORK_MAPPINGS = ("cp", "tucker", "htd", "trd")


@functools.lru_cache(maxsize=4096)
def balanced_factors(n: int, d: int, low: int = 2) -> tuple[int, ...] | None:
    """The most balanced ``d`` factors ``>= low`` of ``n`` (ascending), or ``None`` if there are none.

    Most balanced: the smallest largest factor, then the smallest second largest, ... (768, 2 → (24, 32)).
    """
    best: tuple[int, ...] | None = None

    def search(rest: int, parts: tuple[int, ...], start: int) -> None:
        nonlocal best
        left = d - len(parts)
        if left == 1:
            if rest >= start:
                cand = parts + (rest,)
                if best is None or cand[::-1] < best[::-1]:
                    best = cand
            return
        f = start
        while f ** left <= rest:
            if rest % f == 0:
                search(rest // f, parts + (f,), f)
            f += 1

    search(n, (), low)
    return best


def resolve_factors(n: int, fold: Any, factors: Any) -> tuple[int, ...]:
    """The fold of a side of size ``n``: explicit ``factors`` or the balanced ``fold``-way factorization."""
    if fold is not None:
        check_int("fold", fold, 2)
    if factors is not None:
        lists = factors if isinstance(factors, (list, tuple)) and factors and all(
            isinstance(f, (list, tuple)) for f in factors) else [factors]
        for cand in lists:
            if not isinstance(cand, (list, tuple)) or len(cand) < 2 or not all(
                    isinstance(f, int) and not isinstance(f, bool) and f >= 2 for f in cand):
                raise ValueError(f"network option factors={factors!r} is invalid; allowed: a list of >= 2 integers "
                                 ">= 2 whose product is the side size, or a list of such lists")
        match = [tuple(c) for c in lists if math.prod(c) == n]
        if not match:
            raise ValueError(f"network option factors={factors!r} has no list whose product is the side size n={n}")
        if fold is not None and len(match[0]) != fold:
            raise ValueError(f"network options fold={fold} and factors={list(match[0])} disagree (len(factors) != fold)")
        return match[0]
    d = 2 if fold is None else fold
    found = balanced_factors(n, d)
    if found is None:
        raise ValueError(f"network option fold={d}: the side size n={n} cannot be folded into {d} integer factors "
                         ">= 2 (a prime or too small); set network_options fold/factors, or use network 'ttd'")
    return found


def _node_options(options: dict[str, Any], k: int) -> dict[str, Any]:
    """``node_options`` for a node with ``k`` columns (an integer ``intrinsic_rank`` capped at ``k``)."""
    options = dict(options)
    kp = options.get("intrinsic_rank")
    if isinstance(kp, int) and not isinstance(kp, bool) and kp > k:
        options["intrinsic_rank"] = k
    return options


class NetworkMap(StiefelMap):
    """Shared machinery: fold the side, build one node mapping per ``node_shapes`` entry, ``combine`` them."""

    OPTIONS: ClassVar[dict[str, Any]] = {"node": "taylor", "node_options": {}, "fold": None, "factors": None}
    EXTRA: ClassVar[dict[str, Any]] = {}  # per-network options

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return (*cls.OPTIONS, *cls.EXTRA)

    def __init__(self, n: int, k: int, node: str = "taylor", node_options: dict[str, Any] | None = None,
                 fold: int | None = None, factors: Any = None, **extra: Any) -> None:
        super().__init__(n, k)
        self.factors, shapes, self.extra = self.layout(n, k, node, fold, factors, extra)
        self.node_name = node
        self.node_options = dict(node_options or {})
        self.nodes = nn.ModuleList(build_mapping(node, rows, cols, **_node_options(self.node_options, cols))
                                   for rows, cols in shapes)

    @classmethod
    def layout(cls, n: int, k: int, node: Any, fold: Any, factors: Any,
               extra: dict[str, Any]) -> tuple[tuple[int, ...], list[tuple[int, int]], tuple]:
        """``(factors, node shapes, resolved extra options)``; ``ValueError`` naming the option on bad values."""
        unknown = sorted(set(extra) - set(cls.EXTRA))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for mapping {cls.name!r}; allowed options: "
                             f"{sorted(cls.option_names())}")
        if not isinstance(node, str):
            raise ValueError(f"network option node={node!r} must be a mapping name")
        mapping_class(node)  # raises with the list of mappings
        folded = resolve_factors(n, fold, factors)
        shapes, resolved = cls.node_shapes(n, k, folded, **{**cls.EXTRA, **extra})
        return folded, shapes, resolved

    @classmethod
    def node_shapes(cls, n: int, k: int, factors: tuple[int, ...], **extra: Any) -> tuple[list[tuple[int, int]], tuple]:
        raise NotImplementedError

    @classmethod
    def num_parameters(cls, n: int, k: int, **options: Any) -> int:  # type: ignore[override]
        opts = {**cls.OPTIONS, **options}
        extra = {key: opts.pop(key) for key in list(opts) if key not in cls.OPTIONS}
        _, shapes, _ = cls.layout(n, k, opts["node"], opts["fold"], opts["factors"], extra)
        node_options = dict(opts["node_options"] or {})
        return sum(count_mapping_parameters(opts["node"], rows, cols, **_node_options(node_options, cols))
                   for rows, cols in shapes)

    def combine(self, parts: Sequence[Tensor]) -> Tensor:
        """``Tensor[..., n, k]`` from the nodes' ``Tensor[..., rows_j, cols_j]`` (batched over ``...``)."""
        raise NotImplementedError

    def forward(self) -> Tensor:
        return self.combine([node() for node in self.nodes])

    @classmethod
    def forward_batched(cls, mappings: Sequence[StiefelMap]) -> Tensor:
        """One batched build per node slot (equal batch keys: the slots' nodes share theirs), then one combine."""
        first = mappings[0]
        parts = [type(node).forward_batched([m.nodes[j] for m in mappings]) for j, node in enumerate(first.nodes)]
        return first.combine(parts)

    def batch_key(self) -> Hashable:
        return (type(self), self.n, self.k, self.factors, self.extra, tuple(node.batch_key() for node in self.nodes))

    def reset_parameters(self) -> None:
        for node in self.nodes:
            node.reset_parameters()

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}, factors={self.factors}, node={self.node_name!r}"


def kron_columns(a: Tensor, b: Tensor) -> Tensor:
    """Batched ``torch.kron(a, b)``: ``[..., n1, k1] x [..., n2, k2] → [..., n1·n2, k1·k2]``."""
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    return out.reshape(*out.shape[:-4], a.shape[-2] * b.shape[-2], a.shape[-1] * b.shape[-1])


def khatri_rao(a: Tensor, b: Tensor) -> Tensor:
    """Column-wise Kronecker product ``[..., n1, K] x [..., n2, K] → [..., n1·n2, K]`` (column r: a_r ⊗ b_r)."""
    out = a[..., :, None, :] * b[..., None, :, :]
    return out.reshape(*out.shape[:-3], a.shape[-2] * b.shape[-2], a.shape[-1])


@register_mapping("cp")
class CPMap(NetworkMap):
    r"""CP (Khatri–Rao): :math:`U = A_1 \odot \dots \odot A_d`, :math:`A_j \in \mathrm{St}(n_j, K)`.

    Options: ``node``, ``node_options``, ``fold``, ``factors`` (module docstring).  Count :math:`\sum_j p(n_j, K)`.
    """

    @classmethod
    def node_shapes(cls, n, k, factors, **extra):
        if k > min(factors):
            raise ValueError(f"network 'cp' needs the rank K <= every factor of the fold: k (rank) = {k} > "
                             f"min{tuple(factors)} (n={n}); lower rank or change network_options fold/factors")
        return [(f, k) for f in factors], ()

    def combine(self, parts):
        return functools.reduce(khatri_rao, parts)


@register_mapping("tucker")
class TuckerMap(NetworkMap):
    r"""Tucker (TD, HOSVD form): :math:`U = A_1 \otimes \dots \otimes A_d`, :math:`A_j \in \mathrm{St}(n_j, k_j)`,
    :math:`\prod_j k_j = K`.

    Options: ``node``, ``node_options``, ``fold``, ``factors``, ``mode_ranks`` (default: the balanced
    factorization of K into ``d`` factors, ascending).  Count :math:`\sum_j p(n_j, k_j)`.
    """

    EXTRA: ClassVar[dict[str, Any]] = {"mode_ranks": None}

    @classmethod
    def node_shapes(cls, n, k, factors, mode_ranks=None):
        d = len(factors)
        if mode_ranks is None:
            ranks = balanced_factors(k, d, low=1)
        else:
            if not isinstance(mode_ranks, (list, tuple)) or not all(
                    isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in mode_ranks):
                raise ValueError(f"network option mode_ranks={mode_ranks!r} is invalid; allowed: a list of "
                                 "positive integers, one per factor, whose product is the rank K")
            ranks = tuple(mode_ranks)
            if len(ranks) != d or math.prod(ranks) != k:
                raise ValueError(f"network option mode_ranks={list(ranks)} must have {d} entries (one per factor "
                                 f"{tuple(factors)}) whose product is the rank K = {k}")
        bad = [(f, r) for f, r in zip(factors, ranks) if r > f]
        if bad:
            raise ValueError(f"network 'tucker': mode_ranks {tuple(ranks)} exceed the factors {tuple(factors)} of "
                             f"n={n} (rank K = {k}); set network_options mode_ranks/factors or lower rank")
        return list(zip(factors, ranks)), tuple(ranks)

    def combine(self, parts):
        return functools.reduce(kron_columns, parts)


@register_mapping("htd")
class HTDMap(NetworkMap):
    r"""Hierarchical Tucker / tree tensor network: :math:`U = (A_1 \otimes \dots \otimes A_d)\,B`,
    :math:`A_j \in \mathrm{St}(n_j, k)`, :math:`B \in \mathrm{St}(k^d, K)`.

    Options: ``node``, ``node_options``, ``fold``, ``factors``, ``leaf_rank`` (k, default the smallest with
    :math:`k^d \ge K`).  Count :math:`\sum_j p(n_j, k) + p(k^d, K)`.
    """

    EXTRA: ClassVar[dict[str, Any]] = {"leaf_rank": None}

    @classmethod
    def node_shapes(cls, n, k, factors, leaf_rank=None):
        d = len(factors)
        if leaf_rank is None:
            leaf = 1
            while leaf ** d < k:
                leaf += 1
        else:
            leaf = check_int("leaf_rank", leaf_rank, 1)
            if leaf ** d < k:
                raise ValueError(f"network option leaf_rank={leaf}: leaf_rank**{d} = {leaf ** d} < rank K = {k}; "
                                 "the transfer node needs k^d >= K")
        if leaf > min(factors):
            raise ValueError(f"network 'htd': leaf_rank {leaf} exceeds a factor of {tuple(factors)} (n={n}, rank "
                             f"K = {k}); lower rank or set network_options leaf_rank/fold/factors")
        return [(f, leaf) for f in factors] + [(leaf ** d, k)], (leaf,)

    def combine(self, parts):
        return functools.reduce(kron_columns, parts[:-1]) @ parts[-1]


def ring_bond(k: int) -> int:
    """``R`` with ``R² = k``; ``ValueError`` naming the rank otherwise."""
    bond = math.isqrt(k)
    if bond * bond != k:
        raise ValueError(f"network 'trd' needs the rank K = R² (a square): k (rank) = {k} is not a square; "
                         f"allowed ranks near it: {bond * bond}, {(bond + 1) ** 2}")
    return bond


@register_mapping("trd")
class TRDMap(NetworkMap):
    r"""Tensor ring side chain: :math:`\tilde U[(x_1\dots x_d),(c,a)] = \sum G_1[x_1,a,b]G_2[b,x_2,\cdot]\cdots
    G_d[\cdot,x_d,c]` with :math:`G_1 \in \mathrm{St}(n_1, R^2)`, :math:`G_j \in \mathrm{St}(R n_j, R)`, :math:`K = R^2`.

    Options: ``node``, ``node_options``, ``fold``, ``factors``.  Count :math:`p(n_1,R^2) + \sum_{j\ge2} p(R n_j, R)`.
    """

    @classmethod
    def node_shapes(cls, n, k, factors, **extra):
        bond = ring_bond(k)
        if k > factors[0]:
            raise ValueError(f"network 'trd': the first node St(n_1, R²) needs R² = rank K = {k} <= n_1 = "
                             f"{factors[0]} (factors {tuple(factors)} of n={n}); lower rank or set network_options "
                             "factors with a larger first factor")
        return [(factors[0], k)] + [(bond * f, bond) for f in factors[1:]], (bond,)

    def combine(self, parts):
        bond = self.extra[0]
        g1 = parts[0]
        lead = g1.shape[:-2]
        t = g1.reshape(*lead, g1.shape[-2], bond, bond)  # [rows, a, b]
        for part, f in zip(parts[1:], self.factors[1:]):
            g = part.reshape(*lead, bond, f, bond)  # [b, x, c]
            t = torch.einsum("...rab,...bxc->...rxac", t, g)
            t = t.reshape(*lead, -1, bond, bond)  # [rows, a, c]
        return t.transpose(-1, -2).reshape(*lead, self.n, self.k)  # columns (c, a) = c·R + a
