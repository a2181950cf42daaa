"""Old import paths of code that moved (issue 21's restructuring), kept working with a DeprecationWarning.

A moved module keeps a file at its old path whose only content is ``__getattr__ = moved(__name__, [new modules])``:
a name is looked up in the new modules when it is first used, so that the old path does not import the new home
at import time (no import edges, hence no cycles, from the old place to the new one).
"""
import warnings
from importlib import import_module
from typing import Iterable, Optional, Sequence


def moved(old: str, new_modules: Sequence[str], names: Optional[Iterable[str]] = None):
    """A module-level ``__getattr__`` for ``old`` that serves ``names`` (all public names when None) from the first
    of ``new_modules`` that has them, with a DeprecationWarning naming the new path."""
    allowed = None if names is None else set(names)

    def __getattr__(name: str):
        if not name.startswith("__") and (allowed is None or name in allowed):
            found = [(new, getattr(import_module(new), name)) for new in new_modules
                     if hasattr(import_module(new), name)]
            # name the module that defines it (a new module may import it from another)
            defined = [(new, v) for new, v in found if getattr(v, "__module__", None) == new] or found
            if defined:
                new, value = defined[0]
                warnings.warn(f"{old}.{name} moved to {new}.{name}; the old path will be removed",
                              DeprecationWarning, stacklevel=2)
                return value
        raise AttributeError(f"module {old!r} has no attribute {name!r}")
    return __getattr__
