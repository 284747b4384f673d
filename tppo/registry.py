"""One registry type for every kind of pluggable thing (advantage estimators, engines, rewards, tasks).

A :class:`Registry` maps names to objects, refuses a name registered twice, and answers an unknown
name with an error that lists the registered ones and the closest match::

    ENGINES: Registry[type[Engine]] = Registry("rollout engine")

    @ENGINES.register("hf")
    class HFEngine(Engine): ...

    ENGINES.get("hf")  # -> HFEngine
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> object, read like a mapping, written only through :meth:`register`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[U], U]:
        """Decorator: register the decorated object under ``name``; a taken name raises ValueError."""

        def decorator(obj: U) -> U:
            self.add(name, obj)  # type: ignore[arg-type]
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if not name:
            raise ValueError(f"a {self.kind} needs a non-empty name")
        if name in self._items:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._items[name] = obj

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests register temporary entries)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:  # type: ignore[override]
        """The object registered as ``name``; KeyError naming the registered ones if there is none."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = sorted(self._items)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(known) or 'none'}"

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"
