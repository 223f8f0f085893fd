r"""The manifold guard: :math:`\|U^\top U - I\|_F` of the factors a model really uses, checked as it trains.

Every mapping is orthonormal by construction in exact arithmetic, but the truncated series are not:
``taylor`` drifts once :math:`\|S\|_2` outgrows its order and ``neumann`` diverges for :math:`\|S\|_2 \ge 1`,
which Adam at the paper's learning rates reaches within a few steps at :math:`n = 3072`.  The guard
never lets that pass silently: it measures every factor (all of them in a few batched builds and one
host sync, see :func:`factor_errors`), remembers the largest error seen and warns once per factor
whose error passes ``tolerance``, naming the module, the factor and its mapping.  ``QPeftModel`` runs
it every ``check_every`` training forwards and on the first evaluation forward after the parameters
changed; the benchmark harness records ``max_error`` in every run record.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from qpeft.layers import QPeftLayer
from qpeft.unitary.base import orthonormality_error

DEFAULT_TOLERANCE = 1e-3
DEFAULT_CHECK_EVERY = 100


class ManifoldWarning(UserWarning):
    """An adapter factor is no longer (close to) orthonormal."""


def factor_names(names: Sequence[str], layers: Sequence[QPeftLayer]) -> list[tuple[str, object]]:
    """``(<module>.u<i> | <module>.v<i>, mapping)`` of every factor, in the order of :func:`factor_errors`."""
    out = []
    for name, layer in zip(names, layers):
        for side in ("u", "v"):
            out.extend((f"{name}.{side}{i}", m) for i, m in enumerate(getattr(layer, f"qpeft_{side}")))
    return out


def factor_errors(names: Sequence[str], layers: Sequence[QPeftLayer],
                  built: Sequence[tuple[list[torch.Tensor], list[torch.Tensor]]]) -> dict[str, float]:
    """``‖UᵀU − I‖_F`` (float32 or wider) of already built factors ``built[i] = (us, vs)``; one host sync."""
    errors = [orthonormality_error(u) for us, vs in built for u in (*us, *vs)]
    values = torch.stack([e.to(errors[0].device) for e in errors]).tolist() if errors else []
    return {name: value for (name, _), value in zip(factor_names(names, layers), values)}


@dataclass
class UnitarityGuard:
    r"""Remembers the worst ``‖UᵀU − I‖_F`` seen and warns once per factor above ``tolerance``.

    ``tolerance=None`` disables the warnings (errors are still tracked); ``check_every`` is the number
    of training forwards between two checks (0: only at evaluation).  ``neumann`` factors also warn once
    when :math:`\|S\|_2 \ge 1`, where their series diverges.
    """

    tolerance: float | None = DEFAULT_TOLERANCE
    check_every: int = DEFAULT_CHECK_EVERY
    max_error: float = 0.0
    worst: str | None = None
    warned: set[str] = field(default_factory=set)

    def check(self, names: Sequence[str], layers: Sequence[QPeftLayer],
              built: Sequence[tuple[list[torch.Tensor], list[torch.Tensor]]]) -> dict[str, float]:
        """Measure the built factors of ``layers`` (named ``names``), update the maximum, warn; return the errors."""
        errors = factor_errors(names, layers, built)
        mappings = dict(factor_names(names, layers))
        self.observe(errors, mappings)
        self._check_neumann(mappings)
        return errors

    def observe(self, errors: dict[str, float], mappings: dict[str, object] | None = None) -> None:
        """Update the running maximum; warn once for each factor newly above tolerance."""
        for name, error in errors.items():
            if not error <= self.max_error:  # NaN counts as the worst
                self.max_error, self.worst = error, name
            if self.tolerance is not None and not error <= self.tolerance and name not in self.warned:
                self.warned.add(name)
                mapping = (mappings or {}).get(name)
                warnings.warn(
                    f"qpeft: adapter factor {name} left the Stiefel manifold: ‖UᵀU − I‖_F = {error:.3g} > "
                    f"tolerance {self.tolerance:g}{_hint(mapping)}", ManifoldWarning, stacklevel=2)

    def _check_neumann(self, mappings: dict[str, object]) -> None:
        from qpeft.unitary.lie import NeumannMapping, generator_norm

        for name, mapping in mappings.items():
            key = f"{name}:neumann"
            if self.tolerance is None or not isinstance(mapping, NeumannMapping) or key in self.warned:
                continue
            norm = float(generator_norm(mapping.theta_block()))
            if not norm < 1.0:
                self.warned.add(key)
                warnings.warn(f"qpeft: neumann factor {name} has ‖S‖₂ = {norm:.3g} >= 1, where its series diverges; "
                              "use mapping 'cayley' (exact, same parameters)", ManifoldWarning, stacklevel=2)


def _hint(mapping: object) -> str:
    """What to do about it, by mapping (``taylor``/``neumann`` give ‖S‖₂ and the exact alternative)."""
    if mapping is None:
        return ""
    from qpeft.unitary.lie import NeumannMapping, TaylorMapping, generator_norm

    name = getattr(mapping, "name", type(mapping).__name__)
    if isinstance(mapping, (TaylorMapping, NeumannMapping)):
        norm = float(generator_norm(mapping.theta_block()))
        exact = "exp" if isinstance(mapping, TaylorMapping) else "cayley"
        return (f" ({name}, order {mapping.order}, ‖S‖₂ = {norm:.3g}: the truncated series is inaccurate at this "
                f"norm; mapping '{exact}' is exact at every norm with the same parameters, or lower the learning rate)")
    if any(isinstance(m, TaylorMapping) for m in mapping.modules()):
        from qpeft.unitary.network import NetworkMap

        part = "node" if isinstance(mapping, NetworkMap) else "block"  # a tensor network's option is `node`
        return f" ({name} with taylor {part}s: {part} 'exp' is exact at every norm)"
    return f" ({name})"
