"""Recursive CSD (Eq. 4) and padding for non-power-of-two sizes: dense Eq. 4 reference, counts, rank."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, jacfwd

from qpeft.unitary import build_mapping, count_mapping_parameters
from qpeft.unitary.qsd import _CSDFactor, csd_split

ANGLES = ["per_pair", "single_angle", "fixed"]


def dense_factor(factor: torch.nn.Module | None, n: int) -> torch.Tensor:
    """Whole ``n x n`` matrix of a factor; CSD levels are multiplied out as explicit Eq. 4 matrices."""
    if factor is None:
        return torch.eye(n, dtype=torch.float64)
    if not isinstance(factor, _CSDFactor):
        return factor.matmul(torch.eye(n, dtype=torch.float64))
    n1, n2 = csd_split(n)
    phi = factor.phi.detach().double().expand(n2)
    c, s = torch.diag(torch.cos(phi)), torch.diag(torch.sin(phi))
    middle = torch.eye(n, dtype=torch.float64)
    middle[:n2, :n2], middle[:n2, n1:], middle[n1:, :n2], middle[n1:, n1:] = c, -s, s, c
    left = torch.block_diag(dense_factor(factor.u1, n1), dense_factor(factor.u2, n2))
    right = torch.block_diag(dense_factor(factor.w1, n1), dense_factor(factor.w2, n2))  # w2=None: unused
    return left @ middle @ right


@pytest.mark.parametrize("n", [3, 5, 7, 12, 24])
@pytest.mark.parametrize("k", [1, 3, "n"])
@pytest.mark.parametrize("angles", ANGLES)
@pytest.mark.parametrize("block", ["pauli", "taylor"])
def test_matches_dense_eq4(n: int, k: int | str, angles: str, block: str) -> None:
    k = n if k == "n" else k
    if k > n or (block == "taylor" and n > 12):
        pytest.skip("shape not exercised")
    options = {"init_std": 0.2} if block == "taylor" else {"layers": 2}
    mapping = build_mapping("qsd", n, k, block=block, block_options=options, angles=angles).double()
    dense = dense_factor(mapping.root, n)
    torch.testing.assert_close(mapping(), dense[:, :k], rtol=0, atol=1e-12)
    n1, n2 = csd_split(n)
    if n2 > 1:  # a size-1 factor is the identity; otherwise V2 is dropped exactly when K <= N1
        assert (mapping.root.w2 is None) == (k <= n1)


def _gram_error(u: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(u.T @ u - torch.eye(u.shape[1], dtype=u.dtype)).item()


def _adam_steps(mapping: torch.nn.Module) -> None:
    opt = torch.optim.Adam(mapping.parameters(), lr=0.1)
    target = torch.randn(mapping.n, mapping.k)
    for _ in range(3):
        opt.zero_grad()
        ((mapping() - target) ** 2).sum().backward()
        opt.step()


@pytest.mark.parametrize("name", ["qsd", "pad"])
@pytest.mark.parametrize("n", [768, 96, 3, 5, 6, 12, 1024])
@pytest.mark.parametrize("k", [1, 3, 16])
def test_orthonormal_at_init_and_after_adam(name: str, n: int, k: int) -> None:
    if k > n:
        pytest.skip("k > n")
    mapping = build_mapping(name, n, k)
    assert mapping().shape == (n, k) and mapping.in_manifold(1e-5)
    _adam_steps(mapping)
    assert mapping().shape == (n, k) and mapping.in_manifold(1e-5)


@pytest.mark.parametrize("angles", ANGLES)
def test_orthonormal_taylor_blocks_and_angle_modes(angles: str) -> None:
    options = {"intrinsic_rank": 2, "init_std": 0.05}
    mapping = build_mapping("qsd", 96, 3, block="taylor", block_options=options, angles=angles).double()
    assert _gram_error(mapping()) < 1e-10
    _adam_steps(mapping)
    assert _gram_error(mapping()) < 1e-10


def _full_rank(mapping: torch.nn.Module) -> tuple[int, int]:
    names = [name for name, _ in mapping.named_parameters()]
    params = [p.detach() for p in mapping.parameters()]
    flat = torch.cat([p.reshape(-1) for p in params])

    def full(vector: torch.Tensor) -> torch.Tensor:
        chunks = vector.split([p.numel() for p in params])
        return functional_call(mapping, {n: c.view_as(p) for n, c, p in zip(names, chunks, params)}, ())

    jac = jacfwd(full)(flat).reshape(-1, flat.numel())
    return int(torch.linalg.matrix_rank(jac)), flat.numel()


@pytest.mark.parametrize("n", [5, 6, 7, 12])
def test_jacobian_full_rank(n: int) -> None:
    rank, count = _full_rank(build_mapping("qsd", n, n, angles="per_pair").double())
    assert rank == count


def test_large_size_is_orthonormal_and_uses_few_columns() -> None:
    n, k = 12288, 4  # 8192 + 4096
    mapping = build_mapping("qsd", n, k).double()
    u = mapping()
    assert u.shape == (n, k) and _gram_error(u) < 1e-10
    # right factor truncated to K columns, V2 absent: only the left factors are whole
    assert mapping.root.w1.k == k and mapping.root.w2 is None
    assert mapping.root.u1.n == 8192 and mapping.root.u2.n == 4096


@pytest.mark.parametrize(("n", "k"), [(3, 1), (5, 3), (7, 7), (13, 9), (96, 3), (1000, 9), (3072, 3), (1024, 1)])
@pytest.mark.parametrize("angles", ANGLES)
def test_num_parameters_is_numel(n: int, k: int, angles: str) -> None:
    for layers in (0, 3):
        options = {"block_options": {"layers": layers}}
        for name, extra in (("qsd", {"angles": angles}), ("pad", {})):
            mapping = build_mapping(name, n, k, **options, **extra)
            numel = sum(p.numel() for p in mapping.parameters() if p.requires_grad)
            assert numel == count_mapping_parameters(name, n, k, **options, **extra)
            assert all("phi" not in key or angles != "fixed" for key in mapping.state_dict())
    taylor = {"block": "taylor", "block_options": {"intrinsic_rank": 1}, "angles": angles}
    mapping = build_mapping("qsd", n, k, **taylor)
    assert sum(p.numel() for p in mapping.parameters()) == count_mapping_parameters("qsd", n, k, **taylor)


def test_documented_counts() -> None:
    table = {
        (768, "per_pair"): [328, 374, 420, 466],
        (768, "single_angle"): [73, 119, 165, 211],
        (768, "fixed"): [72, 118, 164, 210],
        (3072, "per_pair"): [1114, 1172, 1230, 1288],
        (3072, "single_angle"): [91, 149, 207, 265],
        (3072, "fixed"): [90, 148, 206, 264],
    }
    for (n, angles), counts in table.items():
        got = [count_mapping_parameters("qsd", n, 3, angles=angles, block_options={"layers": L}) for L in (1, 2, 3, 4)]
        assert got == counts
    # Adding V2 back (b(256)=22, b(1024)=28 at L=1) recovers method.md §11.2's DeBERTa totals.
    for angles, total in (("per_pair", 69_624), ("single_angle", 14_472)):
        p768 = count_mapping_parameters("qsd", 768, 3, angles=angles) + 22
        p3072 = count_mapping_parameters("qsd", 3072, 3, angles=angles) + 28
        assert 12 * (4 * (2 * p768 + 3) + 2 * (p768 + p3072 + 3)) == total


def test_pad_is_a_retraction_of_the_truncated_block() -> None:
    mapping = build_mapping("pad", 768, 5).double()
    rows = mapping.block()[:768]
    u = mapping()
    torch.testing.assert_close(u @ (u.T @ rows), rows)  # same column span
    assert torch.all(torch.diagonal(u.T @ rows) > 0)  # sign-fixed: positive R diagonal
    power = build_mapping("pad", 256, 5)
    torch.testing.assert_close(power(), power.block())


def test_fixed_angle_value() -> None:
    mapping = build_mapping("qsd", 6, 2, angles="fixed")
    assert math.isclose(float(mapping.root.phi), math.pi / 4, rel_tol=1e-7)
    assert not any(name.endswith("phi") for name, _ in mapping.named_parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "word"),
    [
        ("qsd", {"block": "householder"}, "block"),
        ("pad", {"block": "node"}, "block"),
        ("qsd", {"angles": "shared"}, "angles"),
        ("qsd", {"block_options": [1]}, "block_options"),
        ("qsd", {"block_options": {"depth": 1}}, "depth"),
        ("qsd", {"wrong": 1}, "wrong"),
    ],
)
def test_bad_inputs_raise(name: str, kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        build_mapping(name, 12, 3, **kwargs)
    with pytest.raises(ValueError, match=word):
        count_mapping_parameters(name, 12, 3, **kwargs)
    with pytest.raises(ValueError, match="n"):
        build_mapping(name, 1, 1)
