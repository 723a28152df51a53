"""The JAX numeric namespace of the shared step-size policies (:mod:`rkopt.core.control`).

The policies compute with ``policy.xp``; the torch binding leaves it at Python's
:data:`~rkopt.core.control.MATH`, this binding sets :data:`JAX_MATH`, whose functions take Python
numbers and bools as they are (so a static decision stays static) and trace arrays otherwise. An
observable not yet measured is NaN in the state: :meth:`JaxMath.known` is False there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce
from typing import Any

import jax.numpy as jnp

from rkopt.core.control import MATH


def _static(*values: Any) -> bool:
    return all(isinstance(v, (bool, int, float)) for v in values)


class JaxMath:
    """``rkopt.core.control`` namespace over ``jax.numpy``; Python values stay Python values."""

    inf = math.inf

    @staticmethod
    def sqrt(x: Any) -> Any:
        return MATH.sqrt(x) if _static(x) else jnp.sqrt(x)

    @staticmethod
    def isfinite(x: Any) -> Any:
        return MATH.isfinite(x) if _static(x) else jnp.isfinite(x)

    @staticmethod
    def isinf(x: Any) -> Any:
        return MATH.isinf(x) if _static(x) else jnp.isinf(x)

    @staticmethod
    def minimum(a: Any, b: Any) -> Any:
        return min(a, b) if _static(a, b) else jnp.minimum(a, b)

    @staticmethod
    def maximum(a: Any, b: Any) -> Any:
        return max(a, b) if _static(a, b) else jnp.maximum(a, b)

    @staticmethod
    def where(flag: Any, if_true: Any, if_false: Any) -> Any:
        if isinstance(flag, bool):
            return if_true if flag else if_false
        return jnp.where(flag, if_true, if_false)

    @staticmethod
    def logical_and(a: Any, b: Any) -> Any:
        if a is False or b is False:
            return False
        if a is True or b is True:
            return b if a is True else a
        return jnp.logical_and(a, b)

    @classmethod
    def logical_or(cls, a: Any, b: Any) -> Any:
        return cls.logical_not(cls.logical_and(cls.logical_not(a), cls.logical_not(b)))

    @staticmethod
    def logical_not(a: Any) -> Any:
        return (not a) if isinstance(a, bool) else jnp.logical_not(a)

    @classmethod
    def all(cls, flags: Sequence[Any]) -> Any:
        return reduce(cls.logical_and, flags, True)

    @classmethod
    def any(cls, flags: Sequence[Any]) -> Any:
        return reduce(cls.logical_or, flags, False)

    @staticmethod
    def known(value: Any) -> Any:
        if value is None:
            return False
        if _static(value):
            return not math.isnan(value)
        return jnp.logical_not(jnp.isnan(value))


JAX_MATH = JaxMath()
"""The namespace this binding sets on every policy it runs."""
