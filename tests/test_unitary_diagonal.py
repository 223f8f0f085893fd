"""Diagonal nodes, ReinMax and the ``rademacher`` mapping."""

from __future__ import annotations

import pytest
import torch

from qpeft.unitary import build_mapping, count_mapping_parameters
from qpeft.unitary.diagonal import DiagonalNode, reinmax, reinmax_sign


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    return torch.diag(p) - torch.outer(p, p)


def test_real_node_is_the_parameter() -> None:
    node = DiagonalNode(5, "real")
    assert torch.equal(node(), torch.zeros(5))  # λ = 0 at init
    assert node() is node.weight
    assert DiagonalNode.num_parameters(5, "real") == 5 == sum(p.numel() for p in node.parameters())


def test_fixed_node_is_ones_without_parameters() -> None:
    node = DiagonalNode(4, "fixed")
    assert torch.equal(node(), torch.ones(4))
    assert DiagonalNode.num_parameters(4, "fixed") == 0 == len(list(node.parameters()))
    assert list(node.state_dict()) == []


def test_rademacher_outputs_signs_and_gradients_flow() -> None:
    node = DiagonalNode(64, "rademacher", tau=2.0, init_std=1.0)
    for training in (True, False):
        node.train(training)
        node.weight.grad = None
        r = node()
        assert set(r.unique().tolist()) <= {-1.0, 1.0}
        (r * torch.arange(64.0)).sum().backward()
        assert node.weight.grad is not None and node.weight.grad.abs().sum() > 0
    node.eval()
    assert torch.equal(node(), torch.where(node.weight > 0, 1.0, -1.0))  # eval: argmax, deterministic
    assert torch.equal(DiagonalNode(3, "rademacher").eval()(), torch.ones(3))  # ties → +1


def test_sampling_follows_softmax() -> None:
    d = torch.tensor([0.0, 0.5, -1.0])
    draws = torch.stack([reinmax_sign(d.expand(2000, 3), tau=1.0) for _ in range(2)]).reshape(-1, 3)
    freq_plus = (draws > 0).double().mean(0)
    assert torch.allclose(freq_plus, torch.sigmoid(2 * d).double(), atol=0.03)


@pytest.mark.parametrize("tau", (1.0, 3.0))
def test_reinmax_gradient_is_the_second_order_formula(tau: float) -> None:
    logits = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64, requires_grad=True)
    one_hot = reinmax(logits, tau, sample=False)
    assert torch.equal(one_hot.detach(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    upstream = torch.tensor([0.7, -0.2, 1.5], dtype=torch.float64)
    (grad,) = torch.autograd.grad(one_hot, logits, upstream)
    with torch.no_grad():
        pi0 = logits.softmax(-1)
        pi1 = 0.5 * (one_hot + (logits / tau).softmax(-1))
        expected = (2 * softmax_jacobian(pi1) - 0.5 * softmax_jacobian(pi0)) @ upstream
    assert torch.allclose(grad, expected, atol=1e-14, rtol=0)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="tau"):
        DiagonalNode(3, "rademacher", tau=0.5)
    with pytest.raises(ValueError, match="tau"):
        reinmax(torch.zeros(2, 2), tau=0.9)
    with pytest.raises(ValueError, match="kind"):
        DiagonalNode(3, "binary")
    with pytest.raises(ValueError, match="init_std"):
        DiagonalNode(3, "real", init_std=-1.0)
    with pytest.raises(ValueError, match="tau"):
        build_mapping("rademacher", 8, 2, tau=0.1)


@pytest.mark.parametrize("n, k", [(2, 1), (8, 3), (64, 16), (1024, 16)])
def test_rademacher_mapping(n: int, k: int) -> None:
    module = build_mapping("rademacher", n, k, init_std=0.5)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == k
    assert count_mapping_parameters("rademacher", n, k) == k
    target = torch.randn(n, k)
    opt = torch.optim.Adam(module.parameters(), lr=0.1)
    for _ in range(4):
        u = module()
        assert u.shape == (n, k) and module.unitarity_error() == 0
        assert torch.equal(u.abs(), torch.eye(n, k))
        opt.zero_grad()
        (u * target).sum().backward()
        opt.step()
    assert list(module.state_dict()) == ["signs.weight"]
