r"""Mappings for sizes that are not a power of two: recursive CSD (``"qsd"``, Eq. 4) and padding (``"pad"``).

**qsd.**  With :math:`N_1 = 2^{\lfloor\log_2 N\rfloor}` and :math:`N_2 = N - N_1` (so :math:`N_1\ge N_2`),

.. math::
    Q=\begin{pmatrix}U_1&0\\0&U_2\end{pmatrix}
      \begin{pmatrix}C&0&-S\\0&I_{N_1-N_2}&0\\S&0&C\end{pmatrix}
      \begin{pmatrix}W_1&0\\0&W_2\end{pmatrix},
    \qquad C=\mathrm{diag}(\cos\varphi),\ S=\mathrm{diag}(\sin\varphi),\ \varphi\in\mathbb R^{N_2},

i.e. 2x2 rotations on the index pairs :math:`(i, N_1+i)`, :math:`i<N_2`.  :math:`W_j` plays the role of
:math:`V_j^\top` of Eq. 4 and is parameterized directly (same set, same count).  :math:`U_1, W_1` are
``block`` mappings on :math:`N_1` (a power of two); :math:`U_2, W_2` are ``block`` mappings when
:math:`N_2` is a power of two, the same decomposition of size :math:`N_2` otherwise, and the identity
when :math:`N_2=1`.  A power-of-two :math:`N` is the ``block`` mapping itself.

Only :math:`U=Q[:, :K]` is computed, as :math:`Q\,[I_K;0]`: the right factor is only needed on its first
:math:`K` columns (:math:`W_1[:, :\min(K,N_1)]` from the block's own truncated ``forward``), and for
:math:`K\le N_1` the factor :math:`W_2` multiplies zeros only, so it is neither built nor counted.  The
left factors act on an :math:`N_j\times K` matrix through the block's ``matmul``.  No
:math:`N\times N` matrix is formed; the cost is that of the blocks on :math:`K` columns plus :math:`O(NK)`.

``block`` is ``"pauli"`` (Eq. 2), ``"taylor"`` or ``"exp"`` (Lie blocks, rank-``2K'`` generators:
their ``intrinsic_rank`` K' defaults to the mapping's K and is clipped to each block's column count, so
no block is full rank unless asked; ``exp`` blocks stay orthonormal at any norm, ``taylor`` blocks only
while their series is accurate).

``angles`` chooses :math:`\varphi` per CSD level (each recursive node has its own):
``"per_pair"`` (:math:`N_2` angles), ``"single_angle"`` (one shared angle), ``"fixed"``
(:math:`\varphi=\pi/4` everywhere, no parameter).  Trainable angles start uniform in :math:`[0,\pi/2)`.

Parameter count, with :math:`b(n,k)` the block's count and :math:`a(N_2)\in\{N_2, 1, 0\}`:

.. math::
    p(N,k) = b(N,k)\ \ (N=2^m),\qquad p(1,k)=0,\\
    p(N,k) = b(N_1,N_1) + p(N_2,N_2) + a(N_2) + b(N_1,\min(k,N_1)) + [k>N_1]\,p(N_2,k-N_1).

With ``block="pauli"`` (:math:`b=(2L+1)\log_2 n-2L`, independent of :math:`k`) and :math:`K=3`:

=====  ============  =====  =====  =====  =====
N      angles        L=1    L=2    L=3    L=4
=====  ============  =====  =====  =====  =====
768    per_pair      328    374    420    466
768    single_angle  73     119    165    211
768    fixed         72     118    164    210
3072   per_pair      1114   1172   1230   1288
3072   single_angle  91     149    207    265
3072   fixed         90     148    206    264
=====  ============  =====  =====  =====  =====

i.e. :math:`26+46L+a` and :math:`32+58L+a` with :math:`a = 256, 1, 0` resp. :math:`1024, 1, 0`.

Method §11.2's whole-DeBERTa totals 69,624 / 14,472 (per_pair / single_angle, :math:`L=1`) count
:math:`V_2`; without it the same model (12 layers, 4 square 768 matrices and 2 FFN matrices, plus
:math:`K` singular values each) has 66,312 / 11,160 (fixed: 11,016).

**pad.**  The block is built on :math:`N'=2^{\lceil\log_2N\rceil}`, its first :math:`N` rows of the first
:math:`K` columns are kept, and the result is re-orthonormalized by a sign-fixed QR (the Q factor with a
positive-diagonal R, equivalently Gram–Schmidt).  This is a retraction onto :math:`\mathrm{St}(N,K)`, not
an exact truncation of an orthogonal matrix; count = :math:`b(N', K)`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from qpeft.unitary.base import StiefelMap, build_mapping, count_mapping_parameters, register_mapping

BLOCKS = ("pauli", "taylor", "exp")
#: Lie-algebra blocks: their ``intrinsic_rank`` K' defaults to the mapping's K (never the block's full size)
LIE_BLOCKS = ("taylor", "exp")
ANGLES = ("per_pair", "single_angle", "fixed")
FIXED_ANGLE = math.pi / 4


def _is_power_of_two(n: int) -> bool:
    return n & (n - 1) == 0


def csd_split(n: int) -> tuple[int, int]:
    """:math:`(N_1, N_2)` with :math:`N_1 = 2^{\\lfloor\\log_2 n\\rfloor}`, :math:`N_2 = n - N_1`."""
    n1 = 1 << (n.bit_length() - 1)
    return n1, n - n1


def cs_mix(top: Tensor, bottom: Tensor | None, phi: Tensor) -> tuple[Tensor, Tensor]:
    """The middle factor of Eq. 4 on ``[top; bottom]`` (``top[..., N1, m]``, ``bottom[..., N2, m]``).

    ``bottom=None`` means zeros.  ``phi[..., N2]`` or ``phi[..., 1]`` (shared); batched over ``...``.
    """
    n2 = bottom.shape[-2] if bottom is not None else phi.shape[-1]
    cos, sin = torch.cos(phi).unsqueeze(-1), torch.sin(phi).unsqueeze(-1)
    head = top[..., :n2, :]
    if bottom is None:
        new_head, new_bottom = cos * head, sin * head
    else:
        new_head, new_bottom = cos * head - sin * bottom, sin * head + cos * bottom
    return torch.cat([new_head, top[..., n2:, :]], dim=-2), new_bottom


def _check_common(n: int, k: int, block: Any, block_options: dict[str, Any] | None) -> dict[str, Any]:
    """Validated block options; a Lie block's ``intrinsic_rank`` defaults to ``k`` (see :func:`_sized`)."""
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {list(BLOCKS)}, got {block!r}")
    if block_options is not None and not isinstance(block_options, dict):
        raise ValueError(f"block_options must be a dict or None, got {block_options!r}")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    options = dict(block_options or {})
    if block in LIE_BLOCKS and options.get("intrinsic_rank") is None:
        options["intrinsic_rank"] = k
    return options


def _sized(block: str, k: int, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for a block used on ``k`` columns: a Lie block's ``intrinsic_rank`` clipped to ``k``.

    A QSD's inner blocks are whole ``N_1 x N_1`` orthogonal matrices; with the block's own default
    (K' = its size) a 768-wide factor would hold ~166k Lie parameters, more than LoRA.  Here every Lie
    block keeps the intrinsic rank of the mapping (K' = K unless set), i.e. a rank-``2K'`` generator.
    """
    if block in LIE_BLOCKS and isinstance(options.get("intrinsic_rank"), int):
        return {**options, "intrinsic_rank": min(options["intrinsic_rank"], k)}
    return options


def _check_angles(angles: Any) -> str:
    if angles not in ANGLES:
        raise ValueError(f"angles must be one of {list(ANGLES)}, got {angles!r}")
    return angles


def _block_count(block: str, n: int, k: int, options: dict[str, Any]) -> int:
    return count_mapping_parameters(block, n, k, **_sized(block, k, options))


def _factor_count(n: int, k: int, block: str, options: dict[str, Any], angles: str) -> int:
    """:math:`p(n,k)`: parameters of a factor used on its first ``k`` columns (``k = n``: whole)."""
    if n == 1:
        return 0
    if _is_power_of_two(n):
        return _block_count(block, n, k, options)
    n1, n2 = csd_split(n)
    count = _block_count(block, n1, n1, options) + _factor_count(n2, n2, block, options, angles)
    count += {"per_pair": n2, "single_angle": 1, "fixed": 0}[angles]
    count += _block_count(block, n1, min(k, n1), options)
    if k > n1:
        count += _factor_count(n2, k - n1, block, options, angles)
    return count


def _build_factor(n: int, k: int, block: str, options: dict[str, Any], angles: str) -> nn.Module | None:
    if n == 1:
        return None
    if _is_power_of_two(n):
        return build_mapping(block, n, k, **_sized(block, k, options))
    return _CSDFactor(n, k, block, options, angles)


def _factor_times(factor: nn.Module | None, x: Tensor) -> Tensor:
    """``factor @ x`` where ``x[..., r, m]`` holds coefficients of the factor's first ``r`` columns."""
    if factor is None:
        return x
    if isinstance(factor, _CSDFactor):
        return factor.matmul(x)
    if x.shape[-2] == factor.n:
        return factor.matmul(x)
    return factor()[:, : x.shape[-2]] @ x


def _factors_times_batched(factors: Sequence[nn.Module | None], x: Tensor) -> Tensor:
    """``factors[b] @ x[b]`` for equal-structure factors, ``x[B, r, m]`` (batched ``_factor_times``)."""
    first = factors[0]
    if first is None:
        return x
    if isinstance(first, _CSDFactor):
        return _CSDFactor.matmul_batched(factors, x)
    if x.shape[-2] == first.n:
        return type(first).matmul_batched(factors, x)
    return type(first).forward_batched(factors)[..., : x.shape[-2]] @ x


def _factor_key(factor: nn.Module | None) -> Hashable:
    """Everything that fixes the structure of a factor tree: equal keys can be batched."""
    if factor is None:
        return None
    if isinstance(factor, _CSDFactor):
        children = (factor.u1, factor.u2, factor.w1, factor.w2)
        return (factor.n, isinstance(factor.phi, nn.Parameter), factor.phi.shape, *map(_factor_key, children))
    return factor.batch_key()


class _CSDFactor(nn.Module):
    """One level of Eq. 4 of size ``n``, usable on its first ``k`` columns (``k = n``: the whole matrix)."""

    def __init__(self, n: int, k: int, block: str, options: dict[str, Any], angles: str) -> None:
        super().__init__()
        self.n = n
        self.n1, n2 = n1, n2 = csd_split(n)
        self.u1 = _build_factor(n1, n1, block, options, angles)
        self.u2 = _build_factor(n2, n2, block, options, angles)
        self.w1 = _build_factor(n1, min(k, n1), block, options, angles)
        self.w2 = _build_factor(n2, k - n1, block, options, angles) if k > n1 else None
        if angles == "fixed":
            self.register_buffer("phi", torch.full((1,), FIXED_ANGLE), persistent=False)
        else:
            self.phi = nn.Parameter(torch.empty(n2 if angles == "per_pair" else 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if isinstance(self.phi, nn.Parameter):
            with torch.no_grad():
                self.phi.uniform_(0.0, math.pi / 2)
        for factor in (self.u1, self.u2, self.w1, self.w2):
            if factor is not None:
                factor.reset_parameters()

    def matmul(self, x: Tensor) -> Tensor:
        """``Q[:, :r] @ x`` for ``x[..., r, m]`` with ``r <= k``."""
        n1 = self.n1
        top = _factor_times(self.w1, x[..., :n1, :])
        bottom = _factor_times(self.w2, x[..., n1:, :]) if x.shape[-2] > n1 else None
        phi = self.phi.expand(self.n - n1).to(top.dtype)
        top, bottom = cs_mix(top, bottom, phi)
        return torch.cat([_factor_times(self.u1, top), _factor_times(self.u2, bottom)], dim=-2)

    @staticmethod
    def matmul_batched(factors: Sequence[_CSDFactor], x: Tensor) -> Tensor:
        """``factors[b].matmul(x[b])`` for equal-structure factors in one pass, ``x[B, r, m]``."""
        first, n1 = factors[0], factors[0].n1
        top = _factors_times_batched([f.w1 for f in factors], x[..., :n1, :])
        bottom = _factors_times_batched([f.w2 for f in factors], x[..., n1:, :]) if x.shape[-2] > n1 else None
        phi = torch.stack([f.phi for f in factors]).expand(len(factors), first.n - n1).to(top.dtype)
        top, bottom = cs_mix(top, bottom, phi)
        u1 = _factors_times_batched([f.u1 for f in factors], top)
        return torch.cat([u1, _factors_times_batched([f.u2 for f in factors], bottom)], dim=-2)


@register_mapping("qsd")
class QSDMap(StiefelMap):
    """``U = Q[:, :k]`` of the recursive CSD (Eq. 4); see the module docstring for math and count.

    Options: ``block`` ("pauli" | "taylor" | "exp", default "pauli"), ``block_options`` (dict passed to every
    block, default None = {}), ``angles`` ("per_pair" | "single_angle" | "fixed", default "per_pair").
    """

    OPTIONS = {"block": "pauli", "block_options": None, "angles": "per_pair"}

    def __init__(
        self,
        n: int,
        k: int,
        *,
        block: str = "pauli",
        block_options: dict[str, Any] | None = None,
        angles: str = "per_pair",
    ) -> None:
        super().__init__(n, k)
        options = _check_common(n, k, block, block_options)
        self.angles = _check_angles(angles)
        self.root = _build_factor(n, k, block, options, self.angles)

    @staticmethod
    def num_parameters(
        n: int, k: int, block: str = "pauli", block_options: dict[str, Any] | None = None, angles: str = "per_pair"
    ) -> int:
        options = _check_common(n, k, block, block_options)
        return _factor_count(n, k, block, options, _check_angles(angles))

    def reset_parameters(self) -> None:
        self.root.reset_parameters()

    def forward(self) -> Tensor:
        if not isinstance(self.root, _CSDFactor):
            return self.root()
        ref = next(self.parameters())
        return self.root.matmul(torch.eye(self.k, dtype=ref.dtype, device=ref.device))

    def batch_key(self) -> Hashable:
        return (type(self), self.n, self.k, _factor_key(self.root))

    @classmethod
    def forward_batched(cls, mappings: Sequence[QSDMap]) -> Tensor:
        roots = [m.root for m in mappings]
        if not isinstance(roots[0], _CSDFactor):
            return type(roots[0]).forward_batched(roots)
        ref, k = next(mappings[0].parameters()), mappings[0].k
        eye = torch.eye(k, dtype=ref.dtype, device=ref.device).expand(len(mappings), k, k)
        return _CSDFactor.matmul_batched(roots, eye)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}, angles={self.angles!r}"


@register_mapping("pad")
class PadMap(StiefelMap):
    """First ``n`` rows of a ``block`` on the next power of two, re-orthonormalized by sign-fixed QR.

    Options: ``block`` ("pauli" | "taylor" | "exp", default "pauli"), ``block_options`` (default None = {}).
    Count: the block's count on :math:`(2^{\\lceil\\log_2 n\\rceil}, k)`.
    """

    OPTIONS = {"block": "pauli", "block_options": None}

    def __init__(self, n: int, k: int, *, block: str = "pauli", block_options: dict[str, Any] | None = None) -> None:
        super().__init__(n, k)
        options = _check_common(n, k, block, block_options)
        self.block = build_mapping(block, 1 << (n - 1).bit_length(), k, **options)

    @staticmethod
    def num_parameters(n: int, k: int, block: str = "pauli", block_options: dict[str, Any] | None = None) -> int:
        options = _check_common(n, k, block, block_options)
        return _block_count(block, 1 << (n - 1).bit_length(), k, options)

    def reset_parameters(self) -> None:
        self.block.reset_parameters()

    def forward(self) -> Tensor:
        x = self.block()
        if x.shape[0] == self.n:
            return x
        q, r = torch.linalg.qr(x[: self.n])
        sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
        return q * sign

    def batch_key(self) -> Hashable:
        return (type(self), self.n, self.k, self.block.batch_key())

    @classmethod
    def forward_batched(cls, mappings: Sequence[PadMap]) -> Tensor:
        x = type(mappings[0].block).forward_batched([m.block for m in mappings])
        n = mappings[0].n
        if x.shape[-2] == n:
            return x
        q, r = torch.linalg.qr(x[..., :n, :])
        sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
        return q * sign.unsqueeze(-2)
