"""Old names that still work for one release, with a :class:`DeprecationWarning` that names the new one.

Renamed keywords of a function or class::

    @renamed_keywords(pool_size="spare_kernels")
    class Engine: ...

    Engine(pool_size=2)         # works, warns: "Engine(pool_size=...) is deprecated; use spare_kernels="

Renamed module attributes (in the module that holds the new names)::

    __getattr__ = renamed_attributes(__name__, {"from_hf_dataset": "load_hf_dataset"})

A moved module keeps a stub that calls :func:`warn_moved` and re-exports the new module's names.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

REMOVED_IN = "0.3"
"""The release that drops every deprecated name."""

T = TypeVar("T")


def renamed_keywords(**old_to_new: str) -> Callable[[T], T]:
    """Accept the old keyword names of a function (or of a class's constructor) with a warning.

    >>> @renamed_keywords(size="count")
    ... def make(count=1):
    ...     return count
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     warnings.simplefilter("always")
    ...     make(size=3)
    3
    """

    def decorate(target: T) -> T:
        function = target.__init__ if inspect.isclass(target) else target  # type: ignore[misc]
        owner = target.__qualname__ if inspect.isclass(target) else function.__qualname__

        @functools.wraps(function)
        def accepting(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{owner}() got both {old}= (deprecated) and {new}=")
                    warnings.warn(f"{owner}({old}=...) is deprecated and goes in {REMOVED_IN}; use {new}=",
                                  DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        if inspect.isclass(target):
            target.__init__ = accepting  # type: ignore[misc]
            return target
        return accepting  # type: ignore[return-value]

    return decorate


def renamed_attributes(module: str, old_to_new: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves each old name as its new one, with a warning."""

    def __getattr__(name: str) -> Any:
        if name in old_to_new:
            new = old_to_new[name]
            warnings.warn(f"{module}.{name} is deprecated and goes in {REMOVED_IN}; use {module}.{new}",
                          DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(module), new)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def warn_moved(old: str, new: str) -> None:
    """Called by the stub left at a moved module's old path when it is imported."""
    warnings.warn(f"module {old} moved to {new}; the old path goes in {REMOVED_IN}", DeprecationWarning,
                  stacklevel=3)
