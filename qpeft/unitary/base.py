"""The contract every unitary mapping follows, and the registry that builds them by name.

A *mapping* turns a handful of intrinsic parameters into a point of the Stiefel manifold

.. math:: \\mathrm{St}(n, k) = \\{X \\in \\mathbb R^{n\\times k} : X^\\top X = I_k\\},

i.e. an ``n x k`` matrix with orthonormal columns.  Every mapping is an ``nn.Module`` whose
``forward()`` takes no input and returns that matrix; it never builds an ``n x n`` matrix when
``k << n`` (gates are applied to the ``k`` basis columns only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

MAPPINGS: dict[str, type[StiefelMap]] = {}


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in ``[low, high]``; else ``ValueError`` naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return value


def check_real(name: str, value: Any, low: float) -> float:
    """``value`` as a float if it is a real number ``>= low``; else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise ValueError(f"{name} must be a real number >= {low:g}, got {value!r}")
    return float(value)


def orthonormality_error(u: torch.Tensor) -> torch.Tensor:
    """``‖UᵀU − I‖_F`` of ``u[..., n, k]`` (no gradient), computed in float32 or the wider dtype of ``u``."""
    with torch.no_grad():
        u = u.detach().to(torch.promote_types(u.dtype, torch.float32))
        eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
        return torch.linalg.matrix_norm(u.mT @ u - eye)


def register_mapping(name: str) -> Callable[[type[StiefelMap]], type[StiefelMap]]:
    """Class decorator: make a mapping buildable by ``build_mapping(name, ...)``."""

    def wrap(cls: type[StiefelMap]) -> type[StiefelMap]:
        if name in MAPPINGS:
            raise ValueError(f"mapping {name!r} is registered twice")
        cls.name = name
        MAPPINGS[name] = cls
        return cls

    return wrap


def _check_options(cls: type[StiefelMap], options: dict[str, Any]) -> None:
    allowed = cls.option_names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for mapping {cls.name!r}; allowed options: {sorted(allowed)}"
        )


def mapping_class(name: str) -> type[StiefelMap]:
    """The mapping class registered as ``name``; raises ``ValueError`` listing the valid names."""
    from qpeft import unitary  # noqa: F401  (importing the package registers every mapping)

    if name not in MAPPINGS:
        raise ValueError(f"unknown mapping {name!r}; allowed values: {sorted(MAPPINGS)}")
    return MAPPINGS[name]


def build_mapping(name: str, n: int, k: int, **options: Any) -> StiefelMap:
    """Build the mapping ``name`` producing an ``n x k`` orthonormal matrix.

    Raises ``ValueError`` naming the mapping and the allowed values for an unknown name or option.
    """
    cls = mapping_class(name)
    _check_options(cls, options)
    return cls(n, k, **options)


def count_mapping_parameters(name: str, n: int, k: int, **options: Any) -> int:
    """Closed-form trainable-parameter count of mapping ``name`` (no module is built)."""
    cls = mapping_class(name)
    _check_options(cls, options)
    return cls.num_parameters(n, k, **options)


class StiefelMap(nn.Module, ABC):
    """Base class: ``forward() -> Tensor[n, k]`` with orthonormal columns.

    Subclasses define ``OPTIONS`` (option name -> default), ``num_parameters`` (a static formula
    equal to the real number of trainable elements) and ``forward``.  Constants derived from the
    shape (sign vectors, index tables) are registered with ``persistent=False`` so that adapter
    checkpoints hold trainable parameters only.
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, n: int, k: int) -> None:
        super().__init__()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"k must be an integer with 1 <= k <= n={n}, got {k!r}")
        self.n = n
        self.k = k

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(cls.OPTIONS)

    @staticmethod
    @abstractmethod
    def num_parameters(n: int, k: int, **options: Any) -> int:
        """Number of trainable scalars for shape ``(n, k)`` and the given options."""

    @abstractmethod
    def forward(self) -> torch.Tensor:
        """The ``n x k`` matrix with orthonormal columns."""

    @abstractmethod
    def reset_parameters(self) -> None:
        """Re-draw the intrinsic parameters from the initialisation the options describe."""

    def batch_key(self) -> Hashable:
        """Mappings with equal keys can be built together by one ``forward_batched`` call.

        The default (class and shape) suits the default ``forward_batched``; a subclass with a real
        batched core adds every option its core depends on.
        """
        return (type(self), self.n, self.k)

    @classmethod
    def forward_batched(cls, mappings: Sequence[StiefelMap]) -> torch.Tensor:
        """``Tensor[B, n, k]`` whose ``i``-th matrix is ``mappings[i]()``; all share one ``batch_key``.

        Default: one ``forward`` per mapping.  Subclasses override it with one batched call of their
        functional core on the stacked parameters (differentiable, same values as ``forward``).
        """
        return torch.stack([m() for m in mappings])

    @classmethod
    def matmul_batched(cls, mappings: Sequence[StiefelMap], x: torch.Tensor) -> torch.Tensor:
        """``mappings[b].matmul(x[b])`` (the whole orthogonal matrix times ``x[B, n, m]``) for equal-key mappings.

        Default: one ``matmul`` per mapping (only mappings that define ``matmul``).  Subclasses override it
        with one batched call of their core on the stacked parameters.
        """
        return torch.stack([m.matmul(xb) for m, xb in zip(mappings, x.unbind(0))])

    def unitarity_error(self) -> torch.Tensor:
        """Frobenius norm of ``UᵀU - I`` (a 0-dim tensor, no gradient): :func:`orthonormality_error` of ``forward()``."""
        with torch.no_grad():
            return orthonormality_error(self.forward())

    def in_manifold(self, eps: float = 1e-5) -> bool:
        """Whether ``forward()`` has orthonormal columns up to ``eps`` (Frobenius)."""
        return bool(self.unitarity_error() <= eps)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}"
