"""Shared checks of the unitary-mapping tests."""

from __future__ import annotations

import torch


def ortho_error(u: torch.Tensor) -> float:
    """Largest ‖UᵀU − I‖_F over any leading batch dimensions."""
    eye = torch.eye(u.shape[-1], dtype=u.dtype)
    return torch.linalg.matrix_norm(u.mT @ u - eye).max().item()


def adam_steps(module: torch.nn.Module, lr: float = 1e-2, steps: int = 3) -> list[float]:
    """Errors at init and after each of ``steps`` Adam steps on a fixed random linear loss (shape kept)."""
    with torch.no_grad():
        target = torch.randn_like(module())
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    errors = [ortho_error(module().detach())]
    for _ in range(steps):
        opt.zero_grad()
        (module() * target).sum().backward()
        opt.step()
        u = module().detach()
        assert u.shape == (module.n, module.k)
        errors.append(ortho_error(u))
    return errors
