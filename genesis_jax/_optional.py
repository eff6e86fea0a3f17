"""Imports of heavy or optional libraries, done where they are first needed."""

from __future__ import annotations

import importlib


def require(module: str, purpose: str, install: str):
    """The imported module, or ImportError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{purpose} needs {module}: {install}") from e
