"""A zoo entry, the same for every framework's zoo: how to build the model, its input shape
(batch first), a one-line description (the builder's docstring's first line), and whether it is
large (left out of the default sweeps)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ZooEntry:
    build: Callable
    input_shape: tuple[int, ...]
    description: str
    large: bool = False


def entry(build: Callable, input_shape, large: bool = False) -> ZooEntry:
    """The entry for a builder, described by its docstring's first line."""
    return ZooEntry(build, tuple(input_shape), (build.__doc__ or "").strip().splitlines()[0], large)
