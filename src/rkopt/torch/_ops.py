"""Elementwise operations on lists of tensors, in a per-tensor and a ``torch._foreach_*`` flavour.

The optimizer's update math is written once against :class:`TensorListOps`; the two subclasses
differ only in how they dispatch. The per-tensor flavour uses ``out=`` to write results without an
extra pass; the foreach flavour has no ``out=`` and copies first. Reductions are per tensor in both,
accumulated in float64, so both flavours produce bit-identical results on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

Tensors = Sequence[Tensor]


class TensorListOps:
    """Per-tensor loops (the default off CUDA)."""

    foreach = False

    def copy_(self, dst: Tensors, src: Tensors) -> None:
        """dst ← src."""
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)

    def axpy_into(self, dst: Tensors, x: Tensors, y: Tensors, alpha: float) -> None:
        """dst ← x + α y."""
        for d, xi, yi in zip(dst, x, y, strict=True):
            torch.add(xi, yi, alpha=alpha, out=d)

    def axpy_(self, dst: Tensors, y: Tensors, alpha: float) -> None:
        """dst ← dst + α y."""
        for d, yi in zip(dst, y, strict=True):
            d.add_(yi, alpha=alpha)

    def scale_into(self, dst: Tensors, x: Tensors, alpha: float) -> None:
        """dst ← α x."""
        for d, xi in zip(dst, x, strict=True):
            torch.mul(xi, alpha, out=d)

    def scale_(self, dst: Tensors, alpha: float) -> None:
        """dst ← α dst."""
        for d in dst:
            d.mul_(alpha)

    def neg_into(self, dst: Tensors, x: Tensors) -> None:
        """dst ← -x."""
        for d, xi in zip(dst, x, strict=True):
            torch.neg(xi, out=d)

    def mul_(self, dst: Tensors, y: Tensors) -> None:
        """dst ← dst ⊙ y."""
        for d, yi in zip(dst, y, strict=True):
            d.mul_(yi)

    def mul_into(self, dst: Tensors, x: Tensors, y: Tensors) -> None:
        """dst ← x ⊙ y."""
        for d, xi, yi in zip(dst, x, y, strict=True):
            torch.mul(xi, yi, out=d)

    def addcmul_(self, dst: Tensors, x: Tensors, y: Tensors, value: float) -> None:
        """dst ← dst + value · x ⊙ y."""
        for d, xi, yi in zip(dst, x, y, strict=True):
            d.addcmul_(xi, yi, value=value)

    def addcmul_into(self, dst: Tensors, base: Tensors, x: Tensors, y: Tensors, value: float) -> None:
        """dst ← base + value · x ⊙ y."""
        for d, b, xi, yi in zip(dst, base, x, y, strict=True):
            torch.addcmul(b, xi, yi, value=value, out=d)

    def scale_each_(self, dst: Tensors, alphas: Sequence[float]) -> None:
        """dst_i ← α_i dst_i."""
        for d, alpha in zip(dst, alphas, strict=True):
            d.mul_(alpha)

    def add_scalar_(self, dst: Tensors, value: float) -> None:
        """dst ← dst + value."""
        for d in dst:
            d.add_(value)

    def add_scalar_into(self, dst: Tensors, x: Tensors, value: float) -> None:
        """dst ← x + value."""
        for d, xi in zip(dst, x, strict=True):
            torch.add(xi, value, out=d)

    def sqrt_(self, dst: Tensors) -> None:
        for d in dst:
            d.sqrt_()

    def rsqrt_(self, dst: Tensors) -> None:
        for d in dst:
            d.rsqrt_()

    def reciprocal_(self, dst: Tensors) -> None:
        for d in dst:
            d.reciprocal_()

    # -- reductions: shared by both flavours ------------------------------------------------
    # Tensors of more than _BLOCK elements are reduced block by block, in their own precision (half
    # types in float32) and without a converted copy; all block results are summed once, in
    # float64. Temporaries stay block-sized and the relative error ~1e-6 (a float32 norm over
    # millions of elements at once is off by ~1e-4).

    @staticmethod
    def sum_squares(x: Tensors) -> Tensor:
        """Σ x² over all elements (0-dim float64 tensor)."""
        return _sum_of_squares(lambda block: block, [(xi,) for xi in x])

    @staticmethod
    def sum_squared_difference(x: Tensors, y: Tensors) -> Tensor:
        """Σ (x - y)² over all elements."""
        return _sum_of_squares(torch.sub, list(zip(x, y, strict=True)))

    @staticmethod
    def sum_scaled_error_squares(
        error: Tensors, old: Tensors, new: Tensors, atol: float, rtol: float
    ) -> Tensor:
        """Σ (e / (atol + rtol · max(|old|, |new|)))²."""

        def scaled(e: Tensor, a: Tensor, b: Tensor) -> Tensor:
            scale = torch.maximum(a.abs(), b.abs()).mul_(rtol).add_(atol)
            return torch.div(e, scale, out=scale)

        return _sum_of_squares(scaled, list(zip(error, old, new, strict=True)))

    @staticmethod
    def all_finite(x: Tensors) -> bool:
        """Whether every element is finite.

        Fast path: a NaN or ±inf makes its tensor's sum non-finite (one read, no allocation). A sum
        can also overflow for finite values (beyond ~3e38 in float32), so a failed fast check is
        confirmed element by element.
        """
        if not x:
            return True
        if x[0].device.type == "cpu":  # Python floats: no stacking kernels, reads are free on the CPU
            total = sum(_sum(xi).item() for xi in x)
        else:  # one device-to-host read
            total = torch.stack([_sum(xi).double() for xi in x]).sum().item()
        return math.isfinite(total) or all(bool(torch.isfinite(xi).all()) for xi in x)


def _accumulation_dtype(x: Tensor) -> torch.dtype | None:
    return torch.float32 if x.element_size() < 4 else None


_BLOCK = 1 << 18
"""Largest number of elements reduced at once (1 MiB of float32)."""


def _sum_of_squares(fn, groups: Sequence[tuple[Tensor, ...]]) -> Tensor:
    """Σ over the groups of Σ fn(*group)² (elementwise ``fn``), as a 0-dim float64 tensor."""
    norms = []
    for group in groups:
        if group[0].numel() <= _BLOCK:
            blocks = [group]
        else:
            blocks = zip(*(t.reshape(-1).split(_BLOCK) for t in group), strict=True)
        norms += [torch.linalg.vector_norm(fn(*b), dtype=_accumulation_dtype(b[0])) for b in blocks]
    if not norms:
        return torch.zeros((), dtype=torch.float64)
    if len({n.device for n in norms}) > 1:
        norms = [n.cpu() for n in norms]
    return torch.stack(norms).double().square().sum()


def _sum(x: Tensor) -> Tensor:
    return x.sum(dtype=_accumulation_dtype(x))


class ForeachOps(TensorListOps):
    """Horizontally fused ``torch._foreach_*`` kernels (the default on CUDA); off CUDA the ``*_into``
    operations fall back to the per-tensor ``out=`` form (see :func:`_off_cuda`)."""

    foreach = True

    def copy_(self, dst: Tensors, src: Tensors) -> None:
        torch._foreach_copy_(dst, src)

    def axpy_into(self, dst: Tensors, x: Tensors, y: Tensors, alpha: float) -> None:
        if _off_cuda(dst):
            return super().axpy_into(dst, x, y, alpha)
        torch._foreach_copy_(dst, x)
        torch._foreach_add_(dst, y, alpha=alpha)

    def axpy_(self, dst: Tensors, y: Tensors, alpha: float) -> None:
        torch._foreach_add_(dst, y, alpha=alpha)

    def scale_into(self, dst: Tensors, x: Tensors, alpha: float) -> None:
        if _off_cuda(dst):
            return super().scale_into(dst, x, alpha)
        torch._foreach_copy_(dst, x)
        torch._foreach_mul_(dst, alpha)

    def scale_(self, dst: Tensors, alpha: float) -> None:
        torch._foreach_mul_(dst, alpha)

    def neg_into(self, dst: Tensors, x: Tensors) -> None:
        if _off_cuda(dst):
            return super().neg_into(dst, x)
        torch._foreach_copy_(dst, x)
        torch._foreach_neg_(dst)

    def mul_(self, dst: Tensors, y: Tensors) -> None:
        torch._foreach_mul_(dst, y)

    def mul_into(self, dst: Tensors, x: Tensors, y: Tensors) -> None:
        if _off_cuda(dst):
            return super().mul_into(dst, x, y)
        if x is not dst:
            torch._foreach_copy_(dst, x)
        torch._foreach_mul_(dst, y)

    def addcmul_(self, dst: Tensors, x: Tensors, y: Tensors, value: float) -> None:
        torch._foreach_addcmul_(dst, x, y, value=value)

    def addcmul_into(self, dst: Tensors, base: Tensors, x: Tensors, y: Tensors, value: float) -> None:
        if _off_cuda(dst):
            return super().addcmul_into(dst, base, x, y, value)
        torch._foreach_copy_(dst, base)
        torch._foreach_addcmul_(dst, x, y, value=value)

    def scale_each_(self, dst: Tensors, alphas: Sequence[float]) -> None:
        torch._foreach_mul_(dst, list(alphas))

    def add_scalar_(self, dst: Tensors, value: float) -> None:
        torch._foreach_add_(dst, value)

    def add_scalar_into(self, dst: Tensors, x: Tensors, value: float) -> None:
        if _off_cuda(dst):
            return super().add_scalar_into(dst, x, value)
        torch._foreach_copy_(dst, x)
        torch._foreach_add_(dst, value)

    def sqrt_(self, dst: Tensors) -> None:
        torch._foreach_sqrt_(dst)

    def rsqrt_(self, dst: Tensors) -> None:
        torch._foreach_rsqrt_(dst)

    def reciprocal_(self, dst: Tensors) -> None:
        torch._foreach_reciprocal_(dst)


_OUT_FORM_MIN_NUMEL = 1 << 14
"""Mean elements per tensor from which the per-tensor ``out=`` form beats copy-then-update off CUDA
(below it, the extra pass costs less than a Python call per tensor)."""


def _off_cuda(tensors: Tensors) -> bool:
    """Off CUDA a foreach kernel is a loop of per-tensor kernels, and none writes into another list:
    the per-tensor ``out=`` form then saves the extra pass of copy-then-update (3 tensor passes
    instead of 5) for the price of a Python call per tensor, worth it for tensors that are not tiny."""
    if not tensors or tensors[0].is_cuda:
        return False
    return sum(t.numel() for t in tensors) >= _OUT_FORM_MIN_NUMEL * len(tensors)


def list_ops(foreach: bool) -> TensorListOps:
    """The operations flavour for a param group."""
    return _FOREACH if foreach else _PER_TENSOR


_PER_TENSOR = TensorListOps()
_FOREACH = ForeachOps()


class Combination:
    """dst ← base + Σ α_i x_i, built one term at a time: the one linear-combination primitive.

    ``base=None`` stands for 0; ``base is dst`` updates dst in place. Terms with α = 0 are skipped
    (h = 0 makes every term vanish). :attr:`value` is the result so far (``base`` until a term is
    added); :meth:`materialize` makes dst hold it.
    """

    __slots__ = ("base", "dst", "ops", "started")

    def __init__(self, ops: TensorListOps, dst: Tensors, base: Tensors | None) -> None:
        self.ops, self.dst, self.base = ops, dst, base
        self.started = base is dst

    def add(self, x: Tensors, alpha: float) -> Combination:
        if alpha == 0.0:
            return self
        if self.started:
            self.ops.axpy_(self.dst, x, alpha)
        elif self.base is None:
            self.ops.scale_into(self.dst, x, alpha)
        else:
            self.ops.axpy_into(self.dst, self.base, x, alpha)
        self.started = True
        return self

    @property
    def value(self) -> Tensors | None:
        return self.dst if self.started else self.base

    def materialize(self) -> None:
        """dst ← the combination, also when no term was added."""
        if not self.started:
            if self.base is None:
                raise ValueError("a combination of no terms with base 0 has no value to write")
            self.ops.copy_(self.dst, self.base)
            self.started = True
