"""CIFAR fixtures: a synthetic set in the official pickle format, and Hydra composition like run.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.tasks.cifar import write_synthetic_cifar
from tests.harness.conftest import make_cfg  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 x 20 training images, 40 test images (class c = a noisy colour c)."""
    return write_synthetic_cifar(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py")
