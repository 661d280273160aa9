"""Frozen dataclasses made quickly: a big spec's check makes a million spans, syntax
nodes and types, and the `__init__` dataclasses generates for a frozen class looks up
`object.__setattr__` again for every field it sets. (Filling the instance's `__dict__`
directly is quicker still to make, but every later read of a field is slower: Python
keeps the fields of an instance whose dict was never asked for in a quicker form.)
A class with slots (`@dataclass(frozen=True, slots=True)`) is filled through its slots'
own setters, without a search for each attribute: its instances are made in about
half the time and take less memory."""
from __future__ import annotations

import dataclasses

__all__ = ["quick_init"]


def quick_init(cls):
    """Give the frozen dataclass `cls` an `__init__` with `object.__setattr__` at hand:
    the same parameters, defaults and result. Every other method dataclasses made
    (equality, hashing, repr, the frozen __setattr__) stays."""
    if hasattr(cls, "__post_init__"):   # the generated __init__ would skip it
        raise TypeError(f"{cls.__name__}: __post_init__ is not supported")
    params, lines, defaults, setters = [], [], {}, {}
    slotted = "__slots__" in cls.__dict__
    for field in dataclasses.fields(cls):
        if field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: a default factory is not supported")
        if field.default is dataclasses.MISSING:
            params.append(field.name)
        else:
            defaults[f"_default_{field.name}"] = field.default
            params.append(f"{field.name}=_default_{field.name}")
        if slotted:  # the slot's own setter: no search for the attribute per field
            setters[f"_set_{field.name}"] = cls.__dict__[field.name].__set__
            lines.append(f"    _set_{field.name}(self, {field.name})")
        else:
            lines.append(f"    _set(self, {field.name!r}, {field.name})")
    source = (f"def __init__(self, {', '.join(params)}):\n" + "\n".join(lines) + "\n")
    namespace = {**defaults, **setters, "_set": object.__setattr__}
    exec(source, namespace)  # noqa: S102 - the source is made above from field names alone
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls
