"""The building blocks of the config schema: a typed field with a default, and ``REQUIRED``.

Kept apart from ``seg_ssl.config`` so that each method can declare its own config section in its
own file (``Method.config_section``) without importing the config loader, which sits above the
methods (it assembles their sections into the whole schema).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REQUIRED = object()  # sentinel: the key has no default and must be set
NUM = (int, float)


@dataclass(frozen=True)
class Field:
    types: tuple  # accepted Python types (int is accepted where float is)
    default: Any = None
    nullable: bool = False
    choices: tuple | None = None
    doc: str = ""
    minimum: float | None = None  # numbers: the smallest value allowed

    def type_name(self) -> str:
        names = "/".join(t.__name__ for t in self.types)
        if self.choices:
            names = " | ".join(repr(c) for c in self.choices)
        return names + (" or null" if self.nullable else "")


def field(types, default=None, nullable=False, choices=None, doc="", minimum=None) -> Field:
    if not isinstance(types, tuple):
        types = (types,)
    return Field(types, default, nullable, tuple(choices) if choices else None, doc, minimum)
