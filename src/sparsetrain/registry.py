"""A small typed name -> object registry with aliases (models, data sets, methods, inits).

Unknown names raise `ConfigError` naming every valid choice, so the CLI's one-line error
is always actionable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from sparsetrain.errors import ConfigError, choices_message

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps canonical names (and aliases) to registered objects."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator form of `add`: `@REGISTRY.register("name", "alias")`."""

        def decorator(obj: T) -> T:
            self.add(name, obj, *aliases)
            return obj

        return decorator

    def add(self, name: str, obj: T, *aliases: str) -> None:
        """Register `obj` under `name` and `aliases`; registering a name twice is a bug."""
        if name in self._items or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for `name` or an alias of it; unknown → `ConfigError`."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise ConfigError(choices_message(self.kind, name, self.names(with_aliases=True)))

    def get(self, name: str) -> T:
        """The object registered under `name` (or an alias)."""
        return self._items[self.canonical(name)]

    def names(self, with_aliases: bool = False) -> list[str]:
        """Canonical names in registration order (plus aliases if asked)."""
        names = list(self._items)
        return names + list(self._aliases) if with_aliases else names

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
