r"""Lie-algebra mappings ``exp``, ``taylor``, ``cayley`` and ``neumann`` (method.md §3 and §8).

The trainable Lie parameters are the free entries of :math:`\Theta\in\mathbb R^{n\times K'}`
(intrinsic rank :math:`K'\le K`).  They fill a strictly lower-triangular
:math:`\mathcal L\in\mathbb R^{n\times n}` whose nonzeros sit in its first :math:`K'` columns,

.. math:: \mathcal L_{ij} = \Theta_{ij}\ (i > j,\ j < K'),\qquad S = \mathcal L - \mathcal L^\top,

and :math:`U = Q[:, :K]` for

.. math::
    Q_E = \exp(S),\quad Q_T = \sum_{p=0}^{P}\frac{S^p}{p!},\quad
    Q_C = (I+S)(I-S)^{-1},\quad Q_N = (I+S)\sum_{p=0}^{P} S^p .

Only the free entries are stored, so every mapping has
:math:`nK' - K'(K'+1)/2` trainable scalars (:math:`=\dim\mathrm{St}(n,K)` at :math:`K'=K`).

Because :math:`\mathcal L` has :math:`K'` nonzero columns, :math:`SX = \mathcal L_{:,:K'}X_{:K'}
- [\mathcal L_{:,:K'}^\top X;\,0]` costs :math:`O(nK'c)` for :math:`X\in\mathbb R^{n\times c}`;
no mapping forms an ``n x n`` matrix: ``neumann`` is a Horner series, ``cayley`` is exact by Woodbury,
and ``exp`` and ``taylor`` go through the rank-``2K'`` compression of S (:func:`skew_compression`,
:func:`compressed_apply`): a function of one ``2K' x 2K'`` matrix (φ, or Taylor's truncated polynomial)
and :math:`O(nK'(K'+K))` work.

**Staying on the manifold.** ``exp`` and ``cayley`` are orthonormal at every :math:`\|S\|`.  The truncated
series are not: Taylor's error is about :math:`\|S\|^{P+1}/(P+1)!` (P = 18 is accurate up to
:math:`\|S\|_2\approx4`), Neumann's diverges for :math:`\|S\|_2\ge1`, and training with Adam moves
:math:`\|S\|_2` by up to about :math:`\mathrm{lr}\sqrt{nK'}` per step.  ``taylor`` stays the paper's
truncated series (Fig. 6 measures it); :class:`qpeft.guard.UnitarityGuard` measures
:math:`\|U^\top U-I\|_F` of the built factors (training and eval) and warns, naming the factor, once it
passes a tolerance; ``neumann`` also warns when :math:`\|S\|_2\ge1` (:func:`generator_norm`).

Functional, batched cores take the block ``theta: Tensor[..., n, K']`` (entries on or above the
diagonal are ignored) and return ``Tensor[..., n, k]``: :func:`taylor_columns`,
:func:`neumann_columns`, :func:`cayley_columns`, :func:`exp_columns`, and the dense references
:func:`taylor_dense`, :func:`cayley_dense` and :func:`exp_dense`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from qpeft.unitary.base import StiefelMap, check_int, check_real, register_mapping

#: Θ ~ N(0, 0.01²): U starts at a small random rotation of I[:, :K] (not exactly at it), and
#: ‖S‖₂ ≈ 0.01·(√n + √K') stays ≈ 0.4 at n = 1024, where taylor, cayley and neumann reach
#: ‖UᵀU − I‖ ≈ 1e-6 in float32 (the dense float32 ``exp_dense`` accrues ≈ 2e-5 at n ≥ 768).
DEFAULT_INIT_STD = 0.01
#: Taylor's truncation error is about ‖S‖^{P+1}/(P+1)!; P = 18 keeps ‖UᵀU − I‖ below 1e-5 up to
#: ‖S‖₂ ≈ 4 (spec table at N=10, K=3, σ=0.3: P = 2, 4, 8, 12, 18 → 0.70, 4.7e-2, 4.0e-5, 6e-9, 1e-15).
#: Neumann's error is O(‖S‖^{P+1}), so it needs ‖S‖₂ < 1; at P = 18 it stays below 1e-5 up to
#: ‖S‖₂ ≈ 0.7 (measured: 1e-6 at 0.7, 4e-12 at 0.5) and grows with P beyond ‖S‖₂ = 1.
DEFAULT_ORDER = 18


def lie_count(n: int, intrinsic_rank: int) -> int:
    """Free entries of a strictly lower ``n x K'`` block: :math:`nK' - K'(K'+1)/2`."""
    return n * intrinsic_rank - intrinsic_rank * (intrinsic_rank + 1) // 2


def lower_index(n: int, cols: int, device: torch.device | None = None) -> Tensor:
    """Row-major flat positions ``i * cols + j`` of the entries ``i > j`` of an ``n x cols`` block."""
    rows, col = torch.tril_indices(n, cols, offset=-1, device=device)
    return rows * cols + col


def lower_block(values: Tensor, n: int, cols: int, index: Tensor | None = None) -> Tensor:
    """Scatter free entries ``[..., m]`` into a strictly lower ``[..., n, cols]`` block."""
    if index is None:
        index = lower_index(n, cols, values.device)
    flat = values.new_zeros(*values.shape[:-1], n * cols).index_copy(-1, index, values)
    return flat.unflatten(-1, (n, cols))


def skew_apply(a: Tensor, x: Tensor) -> Tensor:
    r""":math:`SX` for :math:`S = \mathcal L - \mathcal L^\top`, ``a = L[..., :, :K']`` strictly lower.

    ``a: [..., n, K']``, ``x: [..., n, c]`` → ``[..., n, c]`` in :math:`O(nK'c)`.
    """
    kp = a.shape[-1]
    lx = a @ x[..., :kp, :]  # [..., n, c]
    top = lx[..., :kp, :] - a.mT @ x  # rows < K' also receive -Lᵀx
    return torch.cat([top, lx[..., kp:, :]], dim=-2)


def _strict(theta: Tensor) -> Tensor:
    return torch.tril(theta, diagonal=-1)


def _eye_columns(theta: Tensor, k: int) -> Tensor:
    n = theta.shape[-2]
    eye = torch.eye(n, k, dtype=theta.dtype, device=theta.device)
    return eye.expand(*theta.shape[:-2], n, k)


def skew_dense(theta: Tensor) -> Tensor:
    """The dense ``[..., n, n]`` generator ``S`` (references and benchmarks only)."""
    a = _strict(theta)
    n, kp = a.shape[-2:]
    low = torch.cat([a, a.new_zeros(*a.shape[:-1], n - kp)], dim=-1)
    return low - low.mT


def taylor_columns(theta: Tensor, k: int, order: int) -> Tensor:
    r"""``Q_T[..., :, :k]``: :func:`taylor_apply` on :math:`I[:, :k]`.

    ``theta: [..., n, K']`` → ``[..., n, k]``, cost :math:`O(nK'(K'+k))`, no ``n x n`` matrix.
    """
    a = _strict(theta)
    return taylor_apply(a, _eye_columns(a, k), order)


def taylor_dense(theta: Tensor, k: int, order: int) -> Tensor:
    """Same value as :func:`taylor_columns` through the dense ``n x n`` S: :math:`O(P n^2 k)`."""
    s = skew_dense(theta)
    x = _eye_columns(theta, k)
    y = x
    for p in range(order, 0, -1):
        y = x + (s @ y) / p
    return y


def neumann_columns(theta: Tensor, k: int, order: int) -> Tensor:
    r"""``Q_N[..., :, :k]`` with :math:`\sum_{p\le P} S^pX` by Horner, :math:`O(P\,n\,k\,K')`.

    Approximates Cayley; accurate only for :math:`\|S\|_2 < 1` (error :math:`\approx\|S\|^{P+1}`).
    """
    a = _strict(theta)
    x = _eye_columns(a, k)
    y = x
    for _ in range(order):
        y = x + skew_apply(a, y)
    return y + skew_apply(a, y)


def cayley_columns(theta: Tensor, k: int) -> Tensor:
    r"""``Q_C[..., :, :k]`` exactly, in :math:`O(nK'k + K'^3)` by the Woodbury identity.

    With :math:`W = [\mathcal L_{:,:K'},\ I_{:,:K'}]` and :math:`J = \begin{psmallmatrix}0&I\\-I&0
    \end{psmallmatrix}`, :math:`S = WJW^\top` and
    :math:`(I-S)^{-1} = I - W(J + W^\top W)^{-1}W^\top` (the small matrix is invertible because
    :math:`\det(J + W^\top W) = \det(I - S)/\det(-J) \ne 0`).  Then
    :math:`Q_CX = (I-S)^{-1}(X + SX)`.
    """
    a = _strict(theta)
    kp = a.shape[-1]
    x = _eye_columns(a, k)
    y = x + skew_apply(a, x)
    eye = torch.eye(kp, dtype=a.dtype, device=a.device)
    zero = torch.zeros_like(eye)
    j = torch.cat([torch.cat([zero, eye], -1), torch.cat([-eye, zero], -1)], -2)
    a_top = a[..., :kp, :]  # EᵀL block, K' x K'
    gram = torch.cat(
        [torch.cat([a.mT @ a, a_top.mT], -1), torch.cat([a_top, eye.expand_as(a_top)], -1)], -2
    )
    wty = torch.cat([a.mT @ y, y[..., :kp, :]], -2)  # Wᵀy, [..., 2K', k]
    z = torch.linalg.solve(j + gram, wty)
    wz = a @ z[..., :kp, :]
    wz = torch.cat([wz[..., :kp, :] + z[..., kp:, :], wz[..., kp:, :]], -2)
    return y - wz


def cayley_dense(theta: Tensor, k: int) -> Tensor:
    """Reference Cayley columns via ``torch.linalg.solve`` on the dense ``n x n`` ``I - S``."""
    s = skew_dense(theta)
    x = _eye_columns(theta, k)
    eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
    return torch.linalg.solve(eye - s, x + s @ x)


def _blocks(tl: Tensor, tr: Tensor, bl: Tensor, br: Tensor) -> Tensor:
    return torch.cat([torch.cat([tl, tr], -1), torch.cat([bl, br], -1)], -2)


def skew_compression(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(Y, M, G)`` with :math:`S = \hat W M \hat W^\top`, :math:`\hat W = [E_{K'},\ (0; Y)]`, :math:`G = \hat W^\top \hat W`.

    ``a = L[..., :, :K']`` strictly lower; ``Y: [..., n-K', K']`` (``a``'s dtype), ``M, G: [..., 2K', 2K']``
    (float64).  Write :math:`C = \mathcal L_{:, :K'} = E\,C_t + (0; X)` (``C_t`` the top ``K' x K'``
    block); then :math:`S = C E^\top - E C^\top = W J W^\top` for :math:`W = [E, C]`,
    :math:`J = \begin{psmallmatrix}0&-I\\I&0\end{psmallmatrix}`.  A triangular :math:`R = \mathrm{chol}
    (X^\top X + I)^\top` (diagonal :math:`\ge 1`, computed without gradient) gives :math:`Y = XR^{-1}`
    (:math:`\|Y\|_2 < 1`, nearly orthonormal once :math:`X` is large), :math:`W = \hat W T` with
    :math:`T = \begin{psmallmatrix}I&C_t\\0&R\end{psmallmatrix}`, and the skew :math:`M = TJT^\top`.
    :math:`R` cancels out of :math:`S`, so holding it constant leaves every gradient exact; it only keeps
    :math:`\hat W` well scaled, so that rounding does not grow with :math:`\|S\|`.
    """
    kp = a.shape[-1]
    top, x = a[..., :kp, :], a[..., kp:, :]
    with torch.no_grad():
        eye64 = torch.eye(kp, dtype=torch.float64, device=a.device)
        # cholesky_ex: non-finite parameters give NaN factors (a NaN loss the harness reports), not an error
        r = torch.linalg.cholesky_ex(x.mT.double() @ x.double() + eye64).L.mT.to(a.dtype)
    y = torch.linalg.solve_triangular(r, x, upper=True, left=False)
    eye, zero = torch.eye(kp, dtype=a.dtype, device=a.device).expand_as(top), torch.zeros_like(top)
    t = _blocks(eye, top, zero, r.expand_as(top))
    m = (t @ _blocks(zero, -eye, eye, zero) @ t.mT).double()
    g = _blocks(eye.double(), zero.double(), zero.double(), (y.mT @ y).double())
    return y, m, g


#: φ's series is evaluated at Z / 2^s with ‖Z / 2^s‖₁ <= PHI_THETA, to order PHI_ORDER:
#: truncation <= PHI_THETA^(PHI_ORDER+1) / (PHI_ORDER+2)! ≈ 5e-17, below float64 rounding.
PHI_THETA, PHI_ORDER = 0.5, 13


def phi_function(z: Tensor) -> Tensor:
    r""":math:`\varphi(Z) = \sum_{q\ge0} Z^q/(q+1)! = \int_0^1 e^{tZ}dt` by scaling and squaring (no inverse of
    :math:`Z`, which may be singular).

    With :math:`s` such that :math:`\|Z/2^s\|_1 \le 1/2` (one host read of the norm, as
    ``torch.linalg.matrix_exp`` does), :math:`\varphi` is summed at
    :math:`W = Z/2^s` (Horner, order 13), then doubled :math:`s` times by
    :math:`\varphi(2W) = \tfrac12\varphi(W)(e^{W} + I)` with :math:`e^{W} = I + W\varphi(W)`.  Only matmuls, so the
    backward is a few more (``matrix_exp``'s backward exponentiates a matrix twice the size, 5x slower
    at ``2K' = 32``).  Equal to the top-right block of :math:`\exp\begin{psmallmatrix}Z&I\\0&0\end{psmallmatrix}`
    to about :math:`10^{-15}` relative (tested).
    """
    norm = float(torch.linalg.matrix_norm(z.detach(), ord=1).max())
    squarings = max(0, math.ceil(math.log2(norm / PHI_THETA))) if math.isfinite(norm) and norm > PHI_THETA else 0
    w = z / 2.0**squarings
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device).expand_as(z)
    phi = eye / math.factorial(PHI_ORDER + 1)
    for q in range(PHI_ORDER, 0, -1):
        phi = eye / math.factorial(q) + w @ phi
    for _ in range(squarings):
        phi = 0.5 * phi @ (2 * eye + w @ phi)  # φ(2W) = ½ φ(W) (e^W + I), e^W = I + W φ(W)
        w = 2 * w
    return phi


def taylor_series(z: Tensor, order: int) -> Tensor:
    r""":math:`\tau_P(Z) = \sum_{p=1}^{P} Z^{p-1}/p!` by Horner (``z[..., m, m]``; for :func:`taylor_apply`)."""
    inverse_factorials = [1.0]  # 1/p! as floats (no integer overflow at large P)
    for p in range(1, order + 1):
        inverse_factorials.append(inverse_factorials[-1] / p)
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device).expand_as(z)
    tau = eye * inverse_factorials[order]
    for p in range(order - 1, 0, -1):
        tau = eye * inverse_factorials[p] + z @ tau
    return tau


def compressed_apply(a: Tensor, x: Tensor, series: Callable[[Tensor], Tensor]) -> Tensor:
    r""":math:`f(S)X = X + \hat W\,\big(g(MG)\,M\big)\,\hat W^\top X` for a power series
    :math:`f(S) = I + \sum_{p\ge1} c_p S^p`, with ``series(Z)`` :math:`= g(Z) = \sum_{p\ge1} c_p Z^{p-1}`.

    With :func:`skew_compression`, :math:`S^p = \hat W (MG)^{p-1} M \hat W^\top`, so only ``g`` of one
    ``2K' x 2K'`` matrix is evaluated (in float64); ``a = L[..., :, :K']`` strictly lower, ``x: [..., n, c]``.
    Cost :math:`O(nK'(K'+c))`, no ``n x n`` matrix.
    """
    kp = a.shape[-1]
    y, m, g = skew_compression(a)
    core = (series(m @ g) @ m).to(a.dtype)
    wx = torch.cat([x[..., :kp, :], y.mT @ x[..., kp:, :]], -2)  # Ŵᵀx, [..., 2K', c]
    z = core @ wx
    return x + torch.cat([z[..., :kp, :], y @ z[..., kp:, :]], -2)


def taylor_apply(a: Tensor, x: Tensor, order: int) -> Tensor:
    r""":math:`Q_T X = \sum_{p=0}^{P} S^pX/p!` through the rank-``2K'`` compression (:func:`compressed_apply`
    with :func:`taylor_series`): the same truncated polynomial as the Horner series
    :math:`X + S(X + \tfrac12 S(\cdots(X + \tfrac1P SX)))`, in :math:`O(nK'(K'+c))` instead of
    :math:`O(P\,n\,c\,K')`.  ``a: [..., n, K']`` strictly lower, ``x: [..., n, c]``.
    """
    return compressed_apply(a, x, lambda z: taylor_series(z, order))


def exp_apply(a: Tensor, x: Tensor) -> Tensor:
    r""":math:`\exp(S)X` exactly, for ``a = L[..., :, :K']`` strictly lower and ``x: [..., n, c]``:
    :func:`compressed_apply` with :math:`\varphi(Z) = \sum_{q\ge0} Z^q/(q+1)!` (:func:`phi_function`),

    .. math:: \exp(S)X = X + \hat W\,\big(\varphi(MG)\,M\big)\,\hat W^\top X,

    exact at every :math:`\|S\|` (φ runs in float64 on ``2K' x 2K'`` matrices).
    """
    return compressed_apply(a, x, phi_function)


def exp_columns(theta: Tensor, k: int) -> Tensor:
    r"""``exp(S)[..., :, :k]`` exactly in :math:`O(nK'(K'+k))`: :func:`exp_apply` on :math:`I[:, :k]`."""
    a = _strict(theta)
    return exp_apply(a, _eye_columns(a, k))


def exp_dense(theta: Tensor, k: int) -> Tensor:
    """Reference ``exp(S)[..., :, :k]``: ``torch.linalg.matrix_exp`` of the dense ``n x n`` S (:math:`O(n^3)`)."""
    return torch.linalg.matrix_exp(skew_dense(theta))[..., :k]


def generator_norm(theta: Tensor) -> Tensor:
    r""":math:`\|S\|_2` without gradient, in :math:`O(nK'^2)`: the nonzero spectrum of :math:`S = \hat W M\hat W^\top`
    is that of the skew :math:`G^{1/2} M G^{1/2}` (:func:`skew_compression`)."""
    with torch.no_grad():
        _, m, g = skew_compression(_strict(theta))
        w, v = torch.linalg.eigh(g)
        root = (v * w.clamp(min=0).sqrt().unsqueeze(-2)) @ v.mT
        return torch.linalg.matrix_norm(root @ m @ root, ord=2)


def check_intrinsic_rank(k: int, intrinsic_rank: Any) -> int:
    """Resolve ``intrinsic_rank`` (``None`` means ``k``); ``ValueError`` unless ``1 <= K' <= k``."""
    if intrinsic_rank is None:
        return k
    if isinstance(intrinsic_rank, bool) or not isinstance(intrinsic_rank, int) or not 1 <= intrinsic_rank <= k:
        raise ValueError(f"intrinsic_rank must be None or an integer in [1, k={k}], got {intrinsic_rank!r}")
    return intrinsic_rank




class LowerEntries(StiefelMap):
    r"""Shared storage: the :math:`nK' - K'(K'+1)/2` free strictly-lower entries of :math:`\Theta` as ``theta``.

    Base of the Lie-algebra mappings and of Householder/Givens (which use all K columns, K' = K).
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"intrinsic_rank": None, "init_std": DEFAULT_INIT_STD}

    def __init__(self, n: int, k: int, intrinsic_rank: int | None = None, init_std: float = DEFAULT_INIT_STD) -> None:
        super().__init__(n, k)
        self.intrinsic_rank = check_intrinsic_rank(k, intrinsic_rank)
        self.init_std = check_real("init_std", init_std, 0.0)
        self.theta = nn.Parameter(torch.empty(lie_count(n, self.intrinsic_rank)))
        self.register_buffer("index", lower_index(n, self.intrinsic_rank), persistent=False)
        self.reset_parameters()

    @staticmethod
    def num_parameters(n: int, k: int, **options: Any) -> int:
        check_real("init_std", options.get("init_std", DEFAULT_INIT_STD), 0.0)
        return lie_count(n, check_intrinsic_rank(k, options.get("intrinsic_rank")))

    def reset_parameters(self) -> None:
        """Θ ~ N(0, init_std²) on the free entries (``init_std = 0`` gives U = I[:, :K])."""
        with torch.no_grad():
            self.theta.normal_(0.0, self.init_std)

    def theta_block(self) -> Tensor:
        """The strictly lower ``n x K'`` block :math:`\\mathcal L_{:, :K'}`."""
        return lower_block(self.theta, self.n, self.intrinsic_rank, self.index)

    def batch_key(self) -> Hashable:
        return (type(self), self.n, self.k, self.intrinsic_rank, getattr(self, "order", None))

    @staticmethod
    def stacked_block(mappings: Sequence[LowerEntries]) -> Tensor:
        """``Tensor[B, n, K']``: the ``theta_block`` of equal-key mappings, built in one scatter."""
        first = mappings[0]
        return lower_block(torch.stack([m.theta for m in mappings]), first.n, first.intrinsic_rank, first.index)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, intrinsic_rank={self.intrinsic_rank}"


class _SeriesMapping(LowerEntries):
    """Adds the polynomial ``order`` P of the Taylor and Neumann series."""

    OPTIONS: ClassVar[dict[str, Any]] = {**LowerEntries.OPTIONS, "order": DEFAULT_ORDER}

    def __init__(
        self,
        n: int,
        k: int,
        intrinsic_rank: int | None = None,
        init_std: float = DEFAULT_INIT_STD,
        order: int = DEFAULT_ORDER,
    ) -> None:
        order = check_int("order", order, 1)
        super().__init__(n, k, intrinsic_rank=intrinsic_rank, init_std=init_std)
        self.order = order

    @staticmethod
    def num_parameters(n: int, k: int, **options: Any) -> int:
        check_int("order", options.get("order", DEFAULT_ORDER), 1)
        return LowerEntries.num_parameters(n, k, **options)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={self.order}"


@register_mapping("exp")
class ExpMapping(LowerEntries):
    r""":math:`U = \exp(S)[:, :K]`, exact at every :math:`\|S\|`, in :math:`O(nK'(K'+K))` (:func:`exp_apply`).

    ``S`` has rank :math:`\le 2K'`, so the exponential reduces to a ``2K' x 2K'`` matrix function; no ``n x n``
    matrix is formed (the dense ``torch.linalg.matrix_exp`` is kept as :func:`exp_dense`, the
    tests' reference).  Float32 keeps :math:`\|U^\top U - I\|_F \approx 10^{-6}` at any norm.

    Options: ``intrinsic_rank`` (K', default K), ``init_std`` (0.01).
    Count: :math:`nK' - K'(K'+1)/2`.
    """

    def forward(self) -> Tensor:
        return exp_columns(self.theta_block(), self.k)

    def matmul(self, x: Tensor) -> Tensor:
        r""":math:`\exp(S)\,x` with the whole ``n x n`` matrix, for ``x[..., n, m]`` (never formed)."""
        return exp_apply(self.theta_block(), x)

    @classmethod
    def forward_batched(cls, mappings: Sequence[LowerEntries]) -> Tensor:
        return exp_columns(cls.stacked_block(mappings), mappings[0].k)

    @classmethod
    def matmul_batched(cls, mappings: Sequence[LowerEntries], x: Tensor) -> Tensor:
        return exp_apply(cls.stacked_block(mappings), x)


@register_mapping("taylor")
class TaylorMapping(_SeriesMapping):
    r""":math:`U = \sum_{p=0}^{P} S^p/p!\,[:, :K]` through the rank-``2K'`` compression, :math:`O(nK'(K'+K))`.

    Options: ``intrinsic_rank`` (K', default K), ``init_std`` (0.01), ``order`` (P, 18).
    Count: :math:`nK' - K'(K'+1)/2`.
    """

    def forward(self) -> Tensor:
        return taylor_columns(self.theta_block(), self.k, self.order)

    def matmul(self, x: Tensor) -> Tensor:
        """:math:`Q_T x` with the whole ``n x n`` matrix, for ``x[..., n, m]`` (never formed)."""
        return taylor_apply(self.theta_block(), x, self.order)

    @classmethod
    def forward_batched(cls, mappings: Sequence[LowerEntries]) -> Tensor:
        return taylor_columns(cls.stacked_block(mappings), mappings[0].k, mappings[0].order)

    @classmethod
    def matmul_batched(cls, mappings: Sequence[LowerEntries], x: Tensor) -> Tensor:
        return taylor_apply(cls.stacked_block(mappings), x, mappings[0].order)


@register_mapping("cayley")
class CayleyMapping(LowerEntries):
    r""":math:`U = (I+S)(I-S)^{-1}[:, :K]`, exact via Woodbury in :math:`O(nK'K + K'^3)`.

    Options: ``intrinsic_rank`` (K', default K), ``init_std`` (0.01).
    Count: :math:`nK' - K'(K'+1)/2`.
    """

    def forward(self) -> Tensor:
        return cayley_columns(self.theta_block(), self.k)

    @classmethod
    def forward_batched(cls, mappings: Sequence[LowerEntries]) -> Tensor:
        return cayley_columns(cls.stacked_block(mappings), mappings[0].k)


@register_mapping("neumann")
class NeumannMapping(_SeriesMapping):
    r""":math:`U = (I+S)\sum_{p=0}^{P} S^p\,[:, :K]`, a truncated Cayley; :math:`O(P\,n\,K\,K')`.

    Only approximately orthonormal: the error is about :math:`\|S\|_2^{P+1}` and the series
    diverges for :math:`\|S\|_2 \ge 1` (which large ``n`` reaches quickly).
    Options: ``intrinsic_rank`` (K', default K), ``init_std`` (0.01), ``order`` (P, 18).
    Count: :math:`nK' - K'(K'+1)/2`.
    """

    def forward(self) -> Tensor:
        return neumann_columns(self.theta_block(), self.k, self.order)

    @classmethod
    def forward_batched(cls, mappings: Sequence[LowerEntries]) -> Tensor:
        return neumann_columns(cls.stacked_block(mappings), mappings[0].k, mappings[0].order)
