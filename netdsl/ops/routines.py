"""Routines a runtime may run its own way: the seam between what ops compute and where.

Ops are written once against `xp`, NumPy or CuPy. A few routines run far better
another way on one array module: on the host spread over threads, a slab of the batch
each; on a GPU as hand-written kernels. Such a routine is declared with its generic code
(`@overridable`), and a runtime provides its own implementation for an array module by
that module's name (`routine.provide("cupy")(fn)`). The implementation is called with the
routine's arguments and may return `NotImplemented` for a case it does not cover, which
then takes the generic code. The compiler never imports the runtime: the runtime fills
these seams when it is imported (netdsl.runtime.host, netdsl.runtime.cuda).

Example
-------
>>> @overridable
... def double(xp, x):
...     return x * 2
>>> @double.provide("numpy")
... def _fast_double(xp, x):
...     return x + x
"""
from __future__ import annotations

import functools
from typing import Callable

__all__ = ["overridable"]


def overridable(generic: Callable) -> Callable:
    """Make `generic(xp, ...)` a routine that dispatches on its array module to an
    implementation a runtime provides, falling back to `generic`."""
    provided: dict[str, Callable] = {}

    @functools.wraps(generic)
    def routine(xp, *args, **kwargs):
        own = provided.get(getattr(xp, "__name__", None))
        if own is not None:
            result = own(xp, *args, **kwargs)
            if result is not NotImplemented:
                return result
        return generic(xp, *args, **kwargs)

    def provide(module: str):
        """Decorator: `fn(xp, ...)` runs this routine for arrays of `module`."""
        def register(fn: Callable) -> Callable:
            provided[module] = fn
            return fn
        return register

    routine.provide = provide
    routine.generic = generic
    routine.provided = provided
    return routine
