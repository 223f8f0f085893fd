"""Pauli parameterization (Eq. 2): dense Kronecker reference, orthonormality, Jacobian rank, counts."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacfwd

from qpeft.unitary import build_mapping, count_mapping_parameters
from qpeft.unitary.pauli import PauliMap, pauli_columns, ry, sign_node, two_design_gate_count

CZ = torch.diag(torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64))
I2 = torch.eye(2, dtype=torch.float64)


def _kron(factors: list[torch.Tensor]) -> torch.Tensor:
    out = factors[0]
    for f in factors[1:]:
        out = torch.kron(out, f)
    return out


def pauli_dense_reference(theta: torch.Tensor, n_qubits: int, layers: int) -> torch.Tensor:
    """Eq. 2 as an explicit product of ``N x N`` Kronecker matrices (slow; tests only)."""
    angles = iter(theta)
    q = _kron([ry(next(angles)) for _ in range(n_qubits)])
    for _ in range(layers):
        for first in (0, 1):  # even sublayer: pairs (1,2),(3,4)..; odd: (2,3),(4,5)..
            pairs = len(range(first, n_qubits - 1, 2))
            if pairs == 0:
                continue
            idle_tail = [I2] * (n_qubits - first - 2 * pairs)
            rot = [I2] * first + [torch.kron(ry(next(angles)), ry(next(angles))) for _ in range(pairs)] + idle_tail
            cz = [I2] * first + [CZ] * pairs + idle_tail
            q = _kron(rot) @ _kron(cz) @ q
    assert next(angles, None) is None
    return q


@pytest.mark.parametrize("n_qubits", range(1, 7))
@pytest.mark.parametrize("layers", range(4))
def test_matches_dense_reference(n_qubits: int, layers: int) -> None:
    n = 2**n_qubits
    mapping = PauliMap(n, n, layers=layers).double()
    dense = pauli_dense_reference(mapping.theta.detach(), n_qubits, layers)
    torch.testing.assert_close(mapping(), dense, rtol=0, atol=1e-12)
    k = min(3, n)
    truncated = PauliMap(n, k, layers=layers).double()
    with torch.no_grad():
        truncated.theta.copy_(mapping.theta)
    torch.testing.assert_close(truncated(), dense[:, :k], rtol=0, atol=1e-12)
    x = torch.randn(n, 5, dtype=torch.float64)
    torch.testing.assert_close(mapping.matmul(x), dense @ x, rtol=0, atol=1e-12)


def _adam_steps(mapping: torch.nn.Module, steps: int = 3) -> None:
    opt = torch.optim.Adam(mapping.parameters(), lr=0.1)
    target = torch.randn(mapping.n, mapping.k)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((mapping() - target) ** 2).sum()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("n", [2, 8, 64, 1024])
@pytest.mark.parametrize("k", [1, 3, 16])
def test_orthonormal_at_init_and_after_adam(n: int, k: int) -> None:
    if k > n:
        pytest.skip("k > n")
    mapping = build_mapping("pauli", n, k, layers=2)
    assert mapping().shape == (n, k)
    assert mapping.in_manifold(1e-5)
    before = mapping.theta.detach().clone()
    _adam_steps(mapping)
    assert not torch.equal(before, mapping.theta.detach())
    assert mapping().shape == (n, k)
    assert mapping.in_manifold(1e-5)


@pytest.mark.parametrize(("n_qubits", "layers"), [(5, 2), (4, 1), (3, 3)])
def test_jacobian_full_rank(n_qubits: int, layers: int) -> None:
    n = 2**n_qubits
    theta = torch.randn(two_design_gate_count(n_qubits, layers), dtype=torch.float64)
    jac = jacfwd(lambda t: pauli_columns(t, n_qubits, layers, n))(theta).reshape(n * n, -1)
    assert torch.linalg.matrix_rank(jac).item() == theta.numel()


@pytest.mark.parametrize("n_qubits", range(1, 11))
@pytest.mark.parametrize("layers", range(5))
def test_num_parameters_is_numel(n_qubits: int, layers: int) -> None:
    n = 2**n_qubits
    mapping = PauliMap(n, 1, layers=layers)
    numel = sum(p.numel() for p in mapping.parameters() if p.requires_grad)
    expected = (2 * layers + 1) * n_qubits - 2 * layers
    assert numel == expected == count_mapping_parameters("pauli", n, 1, layers=layers)
    assert dict(mapping.state_dict()).keys() == {"theta"}  # sign vectors are non-persistent


def test_batched_core_matches_per_sample() -> None:
    n_qubits, layers, k = 4, 2, 3
    theta = torch.randn(2, 3, two_design_gate_count(n_qubits, layers))
    out = pauli_columns(theta, n_qubits, layers, k)
    assert out.shape == (2, 3, 16, k)
    torch.testing.assert_close(out[1, 2], pauli_columns(theta[1, 2], n_qubits, layers, k))


def test_signs_are_cz() -> None:
    # 3 qubits: even sublayer is CZ on (1,2), odd sublayer CZ on (2,3).
    expected_even = torch.tensor([1, 1, 1, 1, 1, 1, -1, -1.0])
    expected_odd = torch.tensor([1, 1, 1, -1, 1, 1, 1, -1.0])
    signs = torch.stack([sign_node(3, (0,)), sign_node(3, (1,))])  # even pairs start at 0, odd at 1
    torch.testing.assert_close(signs, torch.stack([expected_even, expected_odd]))


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"n": 6, "k": 2}, "n"),
        ({"n": 1, "k": 1}, "n"),
        ({"n": 8, "k": 2, "layers": -1}, "layers"),
        ({"n": 8, "k": 2, "layers": 1.5}, "layers"),
        ({"n": 8, "k": 2, "init_std": -0.1}, "init_std"),
        ({"n": 8, "k": 2, "depth": 2}, "depth"),
        ({"n": 8, "k": 9}, "k"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        build_mapping("pauli", **kwargs)
    if set(kwargs) - {"n", "k", "depth"}:
        with pytest.raises(ValueError, match=word):
            count_mapping_parameters("pauli", **kwargs)
