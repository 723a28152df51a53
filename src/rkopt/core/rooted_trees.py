"""Rooted trees and the Runge–Kutta order conditions they index (Butcher theory).

A Runge–Kutta method (A, b, c) has order p iff for every rooted tree t with |t| <= p

    Φ(t) = b · u(t) = 1 / γ(t),

where u(•) = 1 (the vector of ones), u([t1, ..., tm]) = Π_k A u(t_k) (elementwise product), and the
density γ(•) = 1, γ([t1, ..., tm]) = |t| Π_k γ(t_k). There are 1, 1, 2, 4, 9, 20 trees of orders
1..6, hence 1, 2, 4, 8, 17, 37 conditions up to orders 1..6 (Hairer, Nørsett & Wanner I, §II.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import cache
from itertools import combinations_with_replacement

Tree = tuple["Tree", ...]
"""A rooted tree as the sorted tuple of its root's subtrees; the single node • is ``()``."""


def tree_order(tree: Tree) -> int:
    """|t|: the number of nodes."""
    return 1 + sum(tree_order(child) for child in tree)


def tree_density(tree: Tree) -> int:
    """γ(t) = |t| · Π γ(children)."""
    density = tree_order(tree)
    for child in tree:
        density *= tree_density(child)
    return density


def _partitions(total: int, largest: int) -> list[list[int]]:
    """Non-increasing integer partitions of ``total`` with parts at most ``largest``."""
    if total == 0:
        return [[]]
    return [
        [first, *rest]
        for first in range(min(total, largest), 0, -1)
        for rest in _partitions(total - first, first)
    ]


MAX_TREE_ORDER = 12
"""The largest tree order built (a tableau claims at most order 10 and is checked to fail order + 1)."""


@cache
def trees_of_order(order: int) -> tuple[Tree, ...]:
    """All rooted trees with exactly ``order`` nodes, each once, in canonical (sorted) form."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if order > MAX_TREE_ORDER:
        raise ValueError(
            f"rooted trees of order {order} are not built: beyond order {MAX_TREE_ORDER} their number "
            "(7813 up to 12, about 20 million up to 20) makes the order conditions impractical"
        )
    if order == 1:
        return ((),)
    found: set[Tree] = set()
    for sizes in _partitions(order - 1, order - 1):
        # choose a multiset of subtrees: one per part, combinations within equal part sizes
        choices: list[list[tuple[Tree, ...]]] = []
        for size in sorted(set(sizes)):
            count = sizes.count(size)
            choices.append(list(combinations_with_replacement(trees_of_order(size), count)))
        _combine(choices, (), found)
    return tuple(sorted(found, key=_sort_key))


def _combine(choices: list[list[tuple[Tree, ...]]], prefix: tuple[Tree, ...], out: set[Tree]) -> None:
    if not choices:
        out.add(tuple(sorted(prefix, key=_sort_key)))
        return
    for picked in choices[0]:
        _combine(choices[1:], prefix + picked, out)


def _sort_key(tree: Tree) -> tuple:
    return (tree_order(tree), tuple(_sort_key(child) for child in tree))


def trees_up_to(order: int) -> tuple[Tree, ...]:
    """All rooted trees with at most ``order`` nodes."""
    if order > MAX_TREE_ORDER:
        trees_of_order(order)  # raises before any smaller order is built
    return tuple(tree for p in range(1, order + 1) for tree in trees_of_order(p))


def stage_weights(tree: Tree, a: Sequence[Sequence[Fraction | float]]) -> list:
    """u(t): the stage vector whose weighted sum b · u(t) is the elementary weight Φ(t).

    ``a`` holds the strictly lower-triangular rows of A (row i has i entries).
    """
    stages = len(a)
    weights = [1] * stages
    for child in tree:
        inner = stage_weights(child, a)
        for i in range(stages):
            weights[i] *= sum(a[i][j] * inner[j] for j in range(i))
    return weights


def order_condition_residuals(
    a: Sequence[Sequence[Fraction | float]], b: Sequence[Fraction | float], order: int
) -> list[tuple[Tree, float]]:
    """(t, Φ(t) - 1/γ(t)) for every tree with |t| <= order."""
    residuals = []
    for tree in trees_up_to(order):
        phi = sum(bi * ui for bi, ui in zip(b, stage_weights(tree, a), strict=True))
        residuals.append((tree, float(phi - Fraction(1, tree_density(tree)))))
    return residuals
