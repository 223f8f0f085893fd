"""Unitary mappings: intrinsic parameters -> matrices with orthonormal columns (Stiefel points).

Importing this package registers every mapping; build one with ``build_mapping(name, n, k, **options)``.
"""

from qpeft.unitary import diagonal, givens, householder, lie, network, node, pauli, qsd  # noqa: F401  (registration)
from qpeft.unitary.base import (
    MAPPINGS,
    StiefelMap,
    build_mapping,
    count_mapping_parameters,
    mapping_class,
    register_mapping,
)

__all__ = [
    "MAPPINGS",
    "StiefelMap",
    "build_mapping",
    "count_mapping_parameters",
    "mapping_class",
    "register_mapping",
]
