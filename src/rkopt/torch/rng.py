"""Snapshots of PyTorch's global random number generators.

Every stage of a Runge–Kutta step must see the same dropout mask and noise: the optimizer takes a
snapshot before the first closure call and restores it before every further call, so all stages
draw identical numbers; after the step it restores the state that followed the first call, so the
generators advance exactly as after one ordinary training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RNGSnapshot:
    """The CPU generator's state and, if CUDA is initialised, every CUDA device's."""

    cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...] | None

    @classmethod
    def capture(cls) -> RNGSnapshot:
        cuda = None
        if torch.cuda.is_initialized():  # initialised implies available; is_available() is slow
            cuda = tuple(torch.cuda.get_rng_state_all())
        return cls(cpu=torch.get_rng_state(), cuda=cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(list(self.cuda))
