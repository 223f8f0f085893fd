r"""Diagonal nodes (method.md §6): real, Rademacher (±1 through ReinMax) and fixed identity.

* ``"real"`` — the identity map: the trainable vector :math:`\lambda\in\mathbb R^n` itself, as used
  for the singular values :math:`\Lambda = \mathrm{diag}(\lambda)`.  Count ``n``.
* ``"rademacher"`` — :math:`r\in\{\pm1\}^n` from logits :math:`d`: per entry the two-class logits
  :math:`(d_i, -d_i)`, a one-hot :math:`D_i` and :math:`r_i = D_{i,0} - D_{i,1}`, so
  :math:`P(r_i = +1) = \sigma(2d_i)`.  Gradients follow ReinMax (below).  Count ``n``.
* ``"fixed"`` — all ones, no parameters.  Count 0.

**ReinMax** (Liu et al. 2023, "Bridging Discrete and Backpropagation: Straight-Through and
Beyond", Alg. 2), for logits :math:`\theta` and temperature :math:`\tau\ge1`:

.. math::
    \pi_0 = \mathrm{softmax}(\theta),\quad D\sim\pi_0\ \text{(one-hot)},\quad
    \pi_1 = \tfrac12\bigl(D + \mathrm{softmax}(\theta/\tau)\bigr),

    \tilde\pi_1 = \mathrm{softmax}\bigl(\mathrm{sg}(\ln\pi_1 - \theta) + \theta\bigr),\quad
    \pi_2 = 2\tilde\pi_1 - \tfrac12\pi_0,\quad \hat D = D + \pi_2 - \mathrm{sg}(\pi_2).

The forward value is exactly :math:`D`; the backward is the second-order (Heun) estimate
:math:`\partial\hat D/\partial\theta = 2\,J(\pi_1) - \tfrac12 J(\pi_0)`,
:math:`J(\pi) = \mathrm{diag}(\pi) - \pi\pi^\top`.  In eval mode :math:`D` is the deterministic
argmax (ties → :math:`+1`) instead of a sample, with the same surrogate gradient.

The registered mapping ``"rademacher"`` is :math:`U = \mathrm{diag}(r)[:, :K]`: perfectly
orthonormal, but it does not cover :math:`\mathrm{St}(n, K)` (Fig. 6 benchmark only).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qpeft.unitary.base import StiefelMap, check_real, register_mapping


DIAGONAL_KINDS = ("real", "rademacher", "fixed")



def reinmax(logits: Tensor, tau: float, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """One-hot ``[..., C]`` from ``logits: [..., C]``: exact one-hot forward, ReinMax backward.

    ``sample=False`` uses the argmax instead of a draw from ``softmax(logits)``.
    """
    tau = check_real("tau", tau, 1.0)
    pi0 = logits.softmax(-1)
    if sample:
        flat = pi0.detach().reshape(-1, logits.shape[-1])
        index = torch.multinomial(flat, 1, generator=generator).reshape(logits.shape[:-1])
    else:
        index = logits.argmax(-1)
    hard = F.one_hot(index, logits.shape[-1]).to(logits.dtype)
    pi1 = 0.5 * (hard + (logits / tau).softmax(-1))
    pi1 = ((pi1.log() - logits).detach() + logits).softmax(-1)
    pi2 = 2.0 * pi1 - 0.5 * pi0
    return hard + (pi2 - pi2.detach())


def reinmax_sign(d: Tensor, tau: float, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Entries exactly ±1 from logits ``d`` (any shape) via ReinMax on ``(d, -d)``."""
    one_hot = reinmax(torch.stack([d, -d], dim=-1), tau, sample=sample, generator=generator)
    return one_hot[..., 0] - one_hot[..., 1]


def check_kind(kind: Any) -> str:
    if kind not in DIAGONAL_KINDS:
        raise ValueError(f"kind must be one of {list(DIAGONAL_KINDS)}, got {kind!r}")
    return kind


class DiagonalNode(nn.Module):
    r"""A length-``n`` diagonal: ``"real"`` (:math:`\lambda`), ``"rademacher"`` (±1), ``"fixed"`` (ones).

    :param n: length of the diagonal.
    :param kind: one of ``"real"``, ``"rademacher"``, ``"fixed"``.
    :param tau: ReinMax temperature (``>= 1``; used by ``"rademacher"`` only).
    :param init_std: the trainable vector (λ or the logits d) starts at N(0, init_std²); the
        default 0 gives λ = 0 (ΔW = 0 at init) and fair ±1 coins (+1 in eval mode).
    Count: ``n`` for ``"real"`` and ``"rademacher"``, 0 for ``"fixed"``.
    """

    def __init__(self, n: int, kind: str = "real", tau: float = 1.0, init_std: float = 0.0) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self.n = n
        self.kind = check_kind(kind)
        self.tau = check_real("tau", tau, 1.0)
        self.init_std = check_real("init_std", init_std, 0.0)
        if kind == "fixed":
            self.register_buffer("ones", torch.ones(n), persistent=False)
        else:
            self.weight = nn.Parameter(torch.empty(n))
        self.reset_parameters()

    @staticmethod
    def num_parameters(n: int, kind: str = "real") -> int:
        return 0 if check_kind(kind) == "fixed" else n

    def reset_parameters(self) -> None:
        """Trainable vector ~ N(0, init_std²) (nothing to do for ``"fixed"``)."""
        if self.kind != "fixed":
            with torch.no_grad():
                self.weight.normal_(0.0, self.init_std)

    def forward(self) -> Tensor:
        if self.kind == "fixed":
            return self.ones
        if self.kind == "real":
            return self.weight
        return reinmax_sign(self.weight, self.tau, sample=self.training)

    def extra_repr(self) -> str:
        return f"n={self.n}, kind={self.kind!r}, tau={self.tau}"


@register_mapping("rademacher")
class RademacherMapping(StiefelMap):
    r""":math:`U = \mathrm{diag}(r)[:, :K]`, :math:`r\in\{\pm1\}^K` a Rademacher ``DiagonalNode``.

    Only the first K signs reach U, so only K logits are stored.
    Options: ``tau`` (1.0), ``init_std`` (0.0).  Count: :math:`K`.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"tau": 1.0, "init_std": 0.0}

    def __init__(self, n: int, k: int, tau: float = 1.0, init_std: float = 0.0) -> None:
        super().__init__(n, k)
        self.signs = DiagonalNode(k, "rademacher", tau=tau, init_std=init_std)

    @staticmethod
    def num_parameters(n: int, k: int, **options: Any) -> int:
        check_real("tau", options.get("tau", 1.0), 1.0)
        return k

    def reset_parameters(self) -> None:
        self.signs.reset_parameters()

    def forward(self) -> Tensor:
        r = self.signs()
        return torch.eye(self.n, self.k, dtype=r.dtype, device=r.device) * r
