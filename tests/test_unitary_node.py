"""Generalized SO(M) nodes: M=2 equals Pauli, dense reference, orthonormality, Jacobian rank, counts."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacfwd

from qpeft.unitary import build_mapping, count_mapping_parameters
from qpeft.unitary.node import NodeMap, node_columns, skew_from_params
from qpeft.unitary.pauli import PauliMap, sign_node, two_design_gate_count


def _site_sign(a: int, b: int) -> float:
    return -1.0 if bin(a & b).count("1") % 2 else 1.0


def node_dense_reference(theta: torch.Tensor, m: int, q: int, layers: int) -> torch.Tensor:
    """Eq. 2 on M-level sites with explicit Kronecker products (tests only)."""
    gates = iter(torch.linalg.matrix_exp(skew_from_params(theta, m)))
    eye = torch.eye(m, dtype=theta.dtype)
    pair = torch.diag(torch.tensor([_site_sign(a, b) for a in range(m) for b in range(m)], dtype=theta.dtype))

    def kron(fs: list[torch.Tensor]) -> torch.Tensor:
        out = fs[0]
        for f in fs[1:]:
            out = torch.kron(out, f)
        return out

    out = kron([next(gates) for _ in range(q)])
    for _ in range(layers):
        for first in (0, 1):
            pairs = len(range(first, q - 1, 2))
            if pairs == 0:
                continue
            tail = [eye] * (q - first - 2 * pairs)
            rot = [eye] * first + [torch.kron(next(gates), next(gates)) for _ in range(pairs)] + tail
            out = kron(rot) @ kron([eye] * first + [pair] * pairs + tail) @ out
    return out


def test_node_size_two_reproduces_pauli() -> None:
    for n, layers in [(2, 1), (8, 2), (32, 1), (64, 3)]:
        pauli = PauliMap(n, 5 if n > 5 else n, layers=layers).double()
        node = NodeMap(n, pauli.k, node_size=2, layers=layers).double()
        with torch.no_grad():
            node.theta.copy_(pauli.theta.view(-1, 1) / 2)
        torch.testing.assert_close(node(), pauli(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("m", "q", "layers"), [(3, 2, 1), (3, 3, 2), (4, 2, 2), (5, 1, 1), (2, 4, 2)])
def test_matches_dense_reference(m: int, q: int, layers: int) -> None:
    n = m**q
    mapping = NodeMap(n, n, node_size=m, layers=layers).double()
    dense = node_dense_reference(mapping.theta.detach(), m, q, layers)
    torch.testing.assert_close(mapping(), dense, rtol=0, atol=1e-11)
    x = torch.randn(n, 2, dtype=torch.float64)
    torch.testing.assert_close(mapping.matmul(x), dense @ x, rtol=0, atol=1e-11)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("n", [16, 64, 256])
@pytest.mark.parametrize("k", [1, 3, 16])
def test_orthonormal_at_init_and_after_adam(m: int, n: int, k: int) -> None:
    mapping = build_mapping("node", n, k, node_size=m, layers=2)
    assert mapping().shape == (n, k) and mapping.in_manifold(1e-5)
    opt = torch.optim.Adam(mapping.parameters(), lr=0.1)
    target = torch.randn(n, k)
    for _ in range(3):
        opt.zero_grad()
        ((mapping() - target) ** 2).sum().backward()
        opt.step()
    assert mapping().shape == (n, k) and mapping.in_manifold(1e-5)


@pytest.mark.parametrize(("m", "q", "layers"), [(3, 2, 1), (3, 3, 1), (4, 2, 1), (2, 4, 1)])
def test_jacobian_full_rank(m: int, q: int, layers: int) -> None:
    n = m**q
    gates, per_node = two_design_gate_count(q, layers), m * (m - 1) // 2
    theta = torch.randn(gates * per_node, dtype=torch.float64)

    def full(t: torch.Tensor) -> torch.Tensor:
        return node_columns(t.view(gates, per_node), m, q, layers, n)

    jac = jacfwd(full)(theta).reshape(n * n, -1)
    assert torch.linalg.matrix_rank(jac).item() == theta.numel()


@pytest.mark.parametrize("m", [2, 3, 4, 5, 7])
def test_sign_node_has_trivial_local_commutant(m: int) -> None:
    # Distinct rows/columns of the M x M sign table: no site rotation commutes with the pair node.
    table = torch.tensor([[_site_sign(a, b) for b in range(m)] for a in range(m)])
    assert len({tuple(r.tolist()) for r in table}) == m
    torch.testing.assert_close(sign_node(2, (0,), m), table.reshape(-1))


@pytest.mark.parametrize("m", [2, 3, 4, 5])
@pytest.mark.parametrize("q", [1, 2, 3])
@pytest.mark.parametrize("layers", [0, 1, 3])
def test_num_parameters_is_numel(m: int, q: int, layers: int) -> None:
    n = m**q
    mapping = NodeMap(n, 1, node_size=m, layers=layers)
    numel = sum(p.numel() for p in mapping.parameters() if p.requires_grad)
    expected = ((2 * layers + 1) * q - 2 * layers) * m * (m - 1) // 2
    assert numel == expected == count_mapping_parameters("node", n, 1, node_size=m, layers=layers)
    assert dict(mapping.state_dict()).keys() == {"theta"}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n": 12, "k": 2, "node_size": 2}, ["n", "node_size"]),
        ({"n": 16, "k": 2, "node_size": 3}, ["n", "node_size"]),
        ({"n": 3, "k": 1, "node_size": 9}, ["n", "node_size"]),
        ({"n": 16, "k": 2, "node_size": 1}, ["node_size"]),
        ({"n": 16, "k": 2, "layers": -2}, ["layers"]),
        ({"n": 16, "k": 2, "init_std": -1.0}, ["init_std"]),
    ],
)
def test_bad_inputs_raise(kwargs: dict, words: list[str]) -> None:
    for build in (build_mapping, count_mapping_parameters):
        with pytest.raises(ValueError) as info:
            build("node", **kwargs)
        assert all(w in str(info.value) for w in words)
