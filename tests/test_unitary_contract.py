"""The contract of every registered mapping, checked the same way for all (geotorch-style).

Orthonormal columns at init and after each of 3 optimizer steps, shapes kept, the closed-form
count equal to the real numel, unknown names and options rejected with the allowed values.
Sizes a mapping does not support (e.g. 768 for ``pauli``) must be refused with a ``ValueError``.
"""

from __future__ import annotations

import pytest
import torch

from qpeft.unitary import MAPPINGS, build_mapping, count_mapping_parameters

SIZES = [2, 8, 64, 768, 1024]
RANKS = [1, 3, 16]
# mappings whose construction is sequential: checked up to 768/1024 but with one rank there
HEAVY = {"givens", "householder", "cayley"}
# approximate mappings: their error is a documented property measured by the benchmark (Fig. 6)
TOLERANCE = {"neumann": 1e-3}
# the truncated Neumann series diverges once ‖S‖₂ ≥ 1, so it is stepped gently
LEARNING_RATE = {"neumann": 1e-3}


def _cases() -> list[tuple[str, int, int]]:
    cases = []
    for name in sorted(MAPPINGS):
        for n in SIZES:
            for k in RANKS:
                if k > n or (name in HEAVY and n >= 768 and k != 3):
                    continue
                cases.append((name, n, k))
    return cases


@pytest.mark.parametrize("name, n, k", _cases())
def test_orthonormal_at_init_and_after_three_steps(name: str, n: int, k: int) -> None:
    torch.manual_seed(0)
    try:
        mapping = build_mapping(name, n, k)
    except ValueError as err:
        assert "n" in str(err) or "N" in str(err), err  # an unsupported size is refused, naming it
        pytest.skip(f"{name} does not support n={n}: {err}")
    tol = TOLERANCE.get(name, 1e-4)
    params = [p for p in mapping.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == count_mapping_parameters(name, n, k)
    u = mapping()
    assert u.shape == (n, k)
    assert mapping.unitarity_error() < tol
    if not params:
        return
    target = torch.randn(n, k)
    opt = torch.optim.Adam(params, lr=LEARNING_RATE.get(name, 0.05))
    for _ in range(3):
        opt.zero_grad()
        (mapping() - target).pow(2).sum().backward()
        opt.step()
        assert mapping().shape == (n, k)
        assert mapping.unitarity_error() < tol, f"{name} left the manifold: {mapping.unitarity_error():.2e}"


def test_unknown_mapping_and_option_are_refused_with_allowed_values() -> None:
    with pytest.raises(ValueError, match="allowed values"):
        build_mapping("pauly", 8, 2)
    with pytest.raises(ValueError, match="allowed options"):
        build_mapping("taylor", 8, 2, ordr=3)
    with pytest.raises(ValueError, match="k"):
        build_mapping("taylor", 8, 9)
