"""A tiny timm-style registry: a new entry is one decorated function, and the CLI lists them.

Entries carry metadata (a backbone's input size and normalisation, a dataset kind's evaluation
protocol and the schema of its settings, ...): ``@REG.register("name", key=value, ...)``; the
params schema's enums and per-kind fragments are generated from it (dmlrepro.schemas).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, TypeVar

from .errors import DmlReproError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str, required_metadata: tuple[str, ...] = ()):
        self.kind = kind
        self.required_metadata = required_metadata
        self._entries: Dict[str, T] = {}
        self._metadata: Dict[str, Dict[str, Any]] = {}

    def register(self, name: str, **metadata: Any) -> Callable[[T], T]:
        missing = [k for k in self.required_metadata if k not in metadata]
        if missing:  # a programming error, caught at import time
            raise TypeError(f"{self.kind} {name!r} is registered without metadata {missing}")

        def decorator(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            self._metadata[name] = dict(metadata)
            return fn

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise DmlReproError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries))}"
            ) from None

    def metadata(self, name: str) -> Dict[str, Any]:
        self.get(name)
        return dict(self._metadata[name])

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
