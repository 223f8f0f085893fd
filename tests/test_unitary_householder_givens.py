"""Householder (canonical coset decomposition) and Givens mappings."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from qpeft.unitary import build_mapping, count_mapping_parameters
from qpeft.unitary.givens import givens_columns, givens_schedule
from qpeft.unitary.householder import householder_columns
from qpeft.unitary.lie import lie_count, lower_block
from tests.unitary_helpers import adam_steps, ortho_error

MAPS = ("householder", "givens")
SHAPES_SMALL = [(n, k) for n in (2, 8, 64) for k in (1, 3, 16) if k <= n]
F64 = torch.float64


def householder_reference(vectors: torch.Tensor, k: int) -> torch.Tensor:
    n, count = vectors.shape
    q = torch.eye(n, dtype=vectors.dtype)
    for j in range(count):
        v = torch.tril(vectors)[:, j]
        v = v / v.norm()
        q = q @ (torch.eye(n, dtype=vectors.dtype) - 2 * torch.outer(v, v))
    return q[:, :k]


def givens_reference(theta: torch.Tensor, k: int) -> torch.Tensor:
    n, cols = theta.shape
    q = torch.eye(n, dtype=theta.dtype)
    for j in range(cols):
        for i in range(j + 1, n):
            c, s = torch.cos(theta[i, j] / 2), torch.sin(theta[i, j] / 2)
            g = torch.eye(n, dtype=theta.dtype)
            g[j, j], g[i, i], g[j, i], g[i, j] = c, c, -s, s
            q = q @ g
    return q[:, :k]


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("n, k", SHAPES_SMALL)
def test_orthonormal_small(name: str, n: int, k: int) -> None:
    assert max(adam_steps(build_mapping(name, n, k))) < 1e-5


@pytest.mark.parametrize("n", (768, 1024))
def test_householder_large_float32(n: int) -> None:
    assert max(adam_steps(build_mapping("householder", n, 16))) < 1e-5


@pytest.mark.parametrize("n", (768, 1024))
def test_givens_large(n: int) -> None:
    # n + K - 2 sequential float32 rotation steps drift by ~sqrt(n) eps per column (~1e-5 in
    # Frobenius at K = 16), so the exactness check at this size runs in float64.
    module = build_mapping("givens", n, 16).double()
    assert max(adam_steps(module)) < 1e-10
    assert ortho_error(module.float()().detach()) < 1e-4


@pytest.mark.parametrize("n, k", [(2, 1), (2, 2), (5, 3), (9, 4), (6, 6)])
def test_match_sequential_references(n: int, k: int) -> None:
    theta = torch.randn(n, k, dtype=F64)
    assert torch.allclose(givens_columns(theta, k), givens_reference(theta, k), atol=1e-13, rtol=0)
    assert torch.allclose(householder_columns(theta, k), householder_reference(theta, k), atol=1e-13, rtol=0)


def test_batched_cores_equal_per_item() -> None:
    theta = torch.randn(2, 3, 11, 4, dtype=F64)
    for fn in (givens_columns, householder_columns):
        batched = fn(theta, 4)
        assert batched.shape == (2, 3, 11, 4)
        assert torch.allclose(batched[1, 2], fn(theta[1, 2], 4), atol=1e-13, rtol=0)


def test_givens_at_n2_is_ry() -> None:
    module = build_mapping("givens", 2, 2).double()
    angle = module.theta.detach()[0]
    c, s = torch.cos(angle / 2), torch.sin(angle / 2)
    assert torch.allclose(module(), torch.stack([torch.stack([c, -s]), torch.stack([s, c])]))


@pytest.mark.parametrize("n, k", [(5, 5), (9, 4), (13, 2)])
def test_givens_schedule_is_parallel(n: int, k: int) -> None:
    sched = givens_schedule(n, k)
    assert sched.bounds[-1] == lie_count(n, k) == sched.first.numel()
    assert len(sched.bounds) - 1 == n + k - 2
    for lo, hi in zip(sched.bounds[:-1], sched.bounds[1:]):
        rows = torch.cat([sched.first[lo:hi], sched.second[lo:hi]])
        assert rows.unique().numel() == rows.numel()  # disjoint row pairs within a step


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("n, k", [(10, 3), (6, 6), (7, 1), (4, 2)])
def test_jacobian_full_rank(name: str, n: int, k: int) -> None:
    count = lie_count(n, k)
    if name == "householder":
        def fn(v: torch.Tensor) -> torch.Tensor:
            return householder_columns(lower_block(v, n, k) + torch.eye(n, k, dtype=F64), k)
    else:
        def fn(v: torch.Tensor) -> torch.Tensor:
            return givens_columns(lower_block(v, n, k), k)
    for values in (torch.randn(count, dtype=F64), torch.zeros(count, dtype=F64)):
        jac = jacobian(fn, values).reshape(n * k, count)
        assert torch.linalg.matrix_rank(jac).item() == count
    assert count == n * k - k * (k + 1) // 2


@pytest.mark.parametrize("name", MAPS)
def test_num_parameters_matches_numel(name: str) -> None:
    for n, k in [(1, 1), (2, 1), (2, 2), (5, 5), (10, 3), (64, 16), (768, 16)]:
        module = build_mapping(name, n, k, init_std=0.1)
        numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
        assert numel == count_mapping_parameters(name, n, k) == n * k - k * (k + 1) // 2
        assert list(module.state_dict()) == ["theta"]


def test_init_points() -> None:
    assert torch.equal(build_mapping("givens", 7, 3, init_std=0.0)(), torch.eye(7, 3))
    assert torch.equal(build_mapping("householder", 7, 3, init_std=0.0)(), -torch.eye(7, 3))


@pytest.mark.parametrize("name", MAPS)
def test_bad_options_raise(name: str) -> None:
    with pytest.raises(ValueError, match="init_std"):
        build_mapping(name, 8, 3, init_std=-0.5)
    with pytest.raises(ValueError, match="intrinsic_rank"):
        build_mapping(name, 8, 3, intrinsic_rank=2)
    with pytest.raises(ValueError, match="k must be"):
        build_mapping(name, 3, 4)
