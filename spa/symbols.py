"""Sizes known by name: a symbolic dimension is a product of an integer and named symbols.

Shape inference writes a flattened batch as "64*batch"; SPA needs to multiply, divide and compare
such sizes (a reshape of (64*batch, 32) into (batch, 64, 4, 8) splits 32 into 4 x 8 and leaves the
batch alone). Anything that is not a plain product (a sum, an unknown) is one opaque symbol.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/]*$")


@dataclass(frozen=True)
class Product:
    coefficient: int
    symbols: tuple[str, ...] = ()  # sorted, with repetition

    @classmethod
    def of(cls, dim) -> "Product | None":
        """The product a dimension stands for; None for an unknown dimension."""
        if isinstance(dim, bool) or dim is None:
            return None
        if isinstance(dim, int):
            return cls(dim)
        coefficient, symbols = 1, []
        for factor in str(dim).replace(" ", "").split("*"):
            if factor.isdigit():
                coefficient *= int(factor)
            elif _NAME.match(factor):
                symbols.append(factor)
            else:
                return cls(1, (str(dim),))  # not a plain product: one opaque symbol
        return cls(coefficient, tuple(sorted(symbols)))

    def __mul__(self, other: "Product") -> "Product":
        return Product(self.coefficient * other.coefficient, tuple(sorted(self.symbols + other.symbols)))

    def divides(self, other: "Product") -> bool:
        return (self.coefficient != 0 and other.coefficient % self.coefficient == 0
                and not Counter(self.symbols) - Counter(other.symbols))

    def __truediv__(self, other: "Product") -> "Product":
        """Exact division; ValueError when `other` does not divide this."""
        if not other.divides(self):
            raise ValueError(f"{other} does not divide {self}")
        left = Counter(self.symbols) - Counter(other.symbols)
        return Product(self.coefficient // other.coefficient, tuple(sorted(left.elements())))

    @property
    def dim(self):
        """As a shape entry: an int, or a name such as "64*batch"."""
        if not self.symbols:
            return self.coefficient
        return "*".join(([str(self.coefficient)] if self.coefficient != 1 else []) + list(self.symbols))


def product(dims) -> "Product | None":
    total = Product(1)
    for d in dims:
        p = Product.of(d)
        if p is None:
            return None
        total = total * p
    return total
