"""Elementwise operations on lists of tensors, in a per-tensor and a ``torch._foreach_*`` flavour.

The optimizer's update math is written once against :class:`TensorListOps`; the two subclasses
differ only in how they dispatch. The per-tensor flavour uses ``out=`` to write results without an
extra pass; the foreach flavour has no ``out=`` and copies first. Reductions are per tensor in both,
accumulated in float64, so both flavours produce bit-identical results on the CPU.
"""

from __future__ import annotations

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

    def sqrt_(self, dst: Tensors) -> None:
        for d in dst:
            d.sqrt_()

    def rsqrt_(self, dst: Tensors) -> None:
        for d in dst:
            d.rsqrt_()

    def reciprocal_(self, dst: Tensors) -> None:
        for d in dst:
            d.reciprocal_()

    # -- reductions: per tensor, shared by both flavours ------------------------------------
    # Each tensor is reduced in its own precision (half types in float32), without a converted
    # copy; the per-tensor results are summed in float64.

    @staticmethod
    def sum_squares(x: Tensors) -> Tensor:
        """Σ x² over all elements (0-dim float64 tensor)."""
        return _total(_norm(xi) ** 2 for xi in x)

    @staticmethod
    def sum_squared_difference(x: Tensors, y: Tensors) -> Tensor:
        """Σ (x - y)² over all elements (one transient tensor at a time)."""
        return _total(_norm(xi - yi) ** 2 for xi, yi in zip(x, y, strict=True))

    @staticmethod
    def sum_scaled_error_squares(
        error: Tensors, old: Tensors, new: Tensors, atol: float, rtol: float
    ) -> Tensor:
        """Σ (e / (atol + rtol · max(|old|, |new|)))² (two transient tensors at a time)."""
        total = []
        for e, a, b in zip(error, old, new, strict=True):
            scale = torch.maximum(a.abs(), b.abs()).mul_(rtol).add_(atol)
            total.append(_norm(torch.div(e, scale, out=scale)) ** 2)
        return _total(total)

    @staticmethod
    def all_finite(x: Tensors) -> Tensor:
        """Whether every element is finite: a NaN or ±inf makes its tensor's sum non-finite.

        (A sum beyond the float range, ~3e38 in float32, counts as non-finite too.)
        """
        if not x:
            return torch.tensor(True)
        return torch.stack([_sum(xi).double() for xi in x]).isfinite().all()


def _accumulation_dtype(x: Tensor) -> torch.dtype | None:
    return torch.float32 if x.element_size() < 4 else None


def _norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dtype=_accumulation_dtype(x)).double()


def _sum(x: Tensor) -> Tensor:
    return x.sum(dtype=_accumulation_dtype(x))


class ForeachOps(TensorListOps):
    """Horizontally fused ``torch._foreach_*`` kernels (the default on CUDA)."""

    foreach = True

    def copy_(self, dst: Tensors, src: Tensors) -> None:
        torch._foreach_copy_(dst, src)

    def axpy_into(self, dst: Tensors, x: Tensors, y: Tensors, alpha: float) -> None:
        torch._foreach_copy_(dst, x)
        torch._foreach_add_(dst, y, alpha=alpha)

    def axpy_(self, dst: Tensors, y: Tensors, alpha: float) -> None:
        torch._foreach_add_(dst, y, alpha=alpha)

    def scale_into(self, dst: Tensors, x: Tensors, alpha: float) -> None:
        torch._foreach_copy_(dst, x)
        torch._foreach_mul_(dst, alpha)

    def scale_(self, dst: Tensors, alpha: float) -> None:
        torch._foreach_mul_(dst, alpha)

    def neg_into(self, dst: Tensors, x: Tensors) -> None:
        torch._foreach_copy_(dst, x)
        torch._foreach_neg_(dst)

    def mul_(self, dst: Tensors, y: Tensors) -> None:
        torch._foreach_mul_(dst, y)

    def addcmul_(self, dst: Tensors, x: Tensors, y: Tensors, value: float) -> None:
        torch._foreach_addcmul_(dst, x, y, value=value)

    def addcmul_into(self, dst: Tensors, base: Tensors, x: Tensors, y: Tensors, value: float) -> None:
        torch._foreach_copy_(dst, base)
        torch._foreach_addcmul_(dst, x, y, value=value)

    def scale_each_(self, dst: Tensors, alphas: Sequence[float]) -> None:
        torch._foreach_mul_(dst, list(alphas))

    def add_scalar_(self, dst: Tensors, value: float) -> None:
        torch._foreach_add_(dst, value)

    def sqrt_(self, dst: Tensors) -> None:
        torch._foreach_sqrt_(dst)

    def rsqrt_(self, dst: Tensors) -> None:
        torch._foreach_rsqrt_(dst)

    def reciprocal_(self, dst: Tensors) -> None:
        torch._foreach_reciprocal_(dst)


def _total(values) -> Tensor:
    values = list(values)
    if not values:
        return torch.zeros((), dtype=torch.float64)
    devices = {v.device for v in values}
    if len(devices) > 1:
        values = [v.cpu() for v in values]
    return torch.stack(values).sum()


def list_ops(foreach: bool) -> TensorListOps:
    """The operations flavour for a param group."""
    return _FOREACH if foreach else _PER_TENSOR


_PER_TENSOR = TensorListOps()
_FOREACH = ForeachOps()
