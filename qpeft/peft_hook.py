"""Register qpeft with peft as soon as peft is imported, without importing peft at ``import qpeft``.

Importing peft takes seconds (it imports transformers), so ``import qpeft`` only puts a finder on
``sys.meta_path`` that runs :func:`qpeft.peft_interop.register` right after peft's own import finishes;
if peft is already imported it registers at once.  Either way ``import qpeft`` is all it takes for
``peft.PeftModel.from_pretrained`` to open a qpeft adapter.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType


@functools.cache
def peft_installed() -> bool:
    return importlib.util.find_spec("peft") is not None


def _register() -> None:
    if "qpeft.peft_interop" in sys.modules:
        return  # imported or being imported: it registers itself when its import ends
    try:
        from qpeft.peft_interop import register

        register()
    except Exception as err:  # never break `import peft` because of qpeft
        warnings.warn(f"qpeft could not register its adapter type with peft: {err!r}", stacklevel=2)


class _PeftFinder(importlib.abc.MetaPathFinder):
    """Finds peft with the other finders and wraps its loader so that registration follows its import."""

    def find_spec(self, fullname: str, path: object, target: ModuleType | None = None) -> object:
        if fullname != "peft":
            return None
        sys.meta_path.remove(self)  # one shot: the real finders locate peft
        spec = importlib.util.find_spec("peft")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def register_when_imported() -> None:
    """Register now if peft is imported, else as soon as it is (no-op when peft is not installed)."""
    if sys.modules.get("peft") is not None:
        _register()
    elif peft_installed() and not any(isinstance(f, _PeftFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PeftFinder())
