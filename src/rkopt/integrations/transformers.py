"""A Hugging Face ``transformers.Trainer`` that trains with an rkopt optimizer.

``Trainer`` calls ``optimizer.step()`` once per (accumulated) batch and never passes a closure, so
the optimizer must run in stage-wise mode (``stagewise=True``): each ``step()`` takes the gradients
present as one evaluation of the Runge–Kutta step. :class:`RungeKuttaTrainer` makes the Trainer's
step a whole Runge–Kutta step:

1. Trainer fetches the batch (with ``gradient_accumulation_steps > 1``: its micro-batches), runs
   forward and backward on each, clips the gradient and calls ``optimizer.step()``: evaluation 1,
   at θ_n, exactly as for any optimizer.
2. Right after that call (the ``on_optimizer_step`` callback event) the trainer runs the step's
   remaining evaluations itself on the SAME micro-batches, in the same order, with the random
   number generators reset to their state before evaluation 1's first forward pass (the same
   dropout masks), each followed by the same gradient clipping and ``optimizer.step()``, until
   ``step_complete``. Probes (DAL), error-control retries and IGR evaluations included.
3. Trainer then steps the LR scheduler, zeroes the gradients, advances ``global_step`` and logs,
   once per Runge–Kutta step.

Hence ``global_step``, ``max_steps``, warmup, ``logging_steps``, ``eval_steps`` and ``save_steps``
count Runge–Kutta steps; the scheduler advances once per step; the logged ``loss`` is the loss at
θ_n (as ``step(closure)`` returns it) and ``grad_norm`` the norm of evaluation 1's gradient;
checkpoints are written between steps. A step costs ``s`` forward and backward passes (4 for RK4):
``optimizer.counters.grad_evals`` counts them, and ``total_flos`` includes them. The evaluations
after the first run with BatchNorm-style buffers frozen (``rk_freeze_buffers=True``), so running
statistics count once per step.

Tested with transformers 5.24.0 and 4.57.6, accelerate 1.15.0 (single process, CPU); DeepSpeed,
which replaces the optimizer, is refused.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

try:
    from transformers import Trainer, TrainerCallback
except ImportError as error:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "rkopt.integrations.transformers needs Hugging Face transformers: pip install transformers"
    ) from error

from rkopt.integrations import unwrap_optimizer
from rkopt.torch.presets import PRESETS, preset
from rkopt.torch.runge_kutta import RungeKutta
from rkopt.torch.running_stats import frozen_buffers

__all__ = ["RungeKuttaTrainer", "check_stagewise_optimizer"]


def check_stagewise_optimizer(optimizer: Any) -> RungeKutta:
    """The rkopt optimizer inside ``optimizer``, which must be in stage-wise mode; else a clear error."""
    try:
        inner = unwrap_optimizer(optimizer)
    except TypeError:
        raise TypeError(
            f"RungeKuttaTrainer trains with an rkopt optimizer, got {type(optimizer).__name__}. Pass "
            "optimizers=(rkopt.preset('rk4', model.parameters(), lr=..., stagewise=True), None), or "
            "rk_preset='rk4' (and rk_kwargs), or use transformers.Trainer for other optimizers"
        ) from None
    if not inner.stagewise:
        raise ValueError(
            "RungeKuttaTrainer needs the rkopt optimizer in stage-wise mode: Trainer calls "
            "optimizer.step() after each backward and never passes a closure, so create it with "
            "stagewise=True (e.g. rkopt.RK4(params, lr=0.1, stagewise=True) or rkopt.preset(name, params, "
            "lr, stagewise=True)); the trainer then feeds every evaluation of a Runge–Kutta step the "
            "same batch"
        )
    return inner


class _CompleteStep(TrainerCallback):
    """Runs the remaining evaluations of a Runge–Kutta step right after Trainer's ``optimizer.step()``."""

    def __init__(self, trainer: RungeKuttaTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._complete_runge_kutta_step()


class _CaptureRNG(TrainerCallback):
    """Captures the random number generators before a step's first forward pass (the last
    ``on_step_begin`` handler, so draws of other callbacks come before the capture)."""

    def __init__(self, trainer: RungeKuttaTrainer) -> None:
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._capture_rng()


class RungeKuttaTrainer(Trainer):
    """``transformers.Trainer`` whose optimizer step is one whole Runge–Kutta step on one batch.

    Takes every ``Trainer`` argument, plus:

    Args:
        rk_preset: build the optimizer as ``rkopt.preset(rk_preset, groups, lr=args.learning_rate,
            stagewise=True, **rk_kwargs)`` (default ``"rk4"`` when neither ``optimizers`` nor
            ``optimizer_cls_and_kwargs`` gives one). The groups are Trainer's: weight decay
            ``args.weight_decay`` (``rk_kwargs["weight_decay"]`` if given) on all but biases and
            norm layers, coupled unless ``rk_kwargs`` sets ``decoupled_weight_decay=True``.
            ``args.optim`` and the Adam arguments are ignored.
        rk_kwargs: more keyword arguments to :class:`rkopt.RungeKutta` (``momentum``, ``lr_policy``,
            ``on_nonfinite``, …).
        rk_freeze_buffers: restore the model's buffers after every evaluation but the first of a
            step, so BatchNorm running statistics count once per step (default True).

    An optimizer given via ``optimizers=(optimizer, scheduler)`` or ``optimizer_cls_and_kwargs``
    must be an rkopt optimizer with ``stagewise=True``; anything else is refused.
    ``gradient_accumulation_steps > 1`` works: every evaluation of a step accumulates the gradient
    over the same micro-batches. ``args.max_grad_norm`` (default 1.0) clips every evaluation's
    gradient, i.e. the field being integrated; set it to 0 for the plain gradient flow.
    """

    def __init__(
        self,
        *args: Any,
        rk_preset: str | None = None,
        rk_kwargs: dict[str, Any] | None = None,
        rk_freeze_buffers: bool = True,
        **kwargs: Any,
    ) -> None:
        if rk_preset is not None and rk_preset not in PRESETS:
            raise ValueError(f"unknown rk_preset {rk_preset!r}; valid presets: {', '.join(PRESETS)}")
        self.rk_preset = rk_preset
        self.rk_kwargs = dict(rk_kwargs or {})
        self.rk_freeze_buffers = rk_freeze_buffers
        self._rk_batches: list[Any] = []
        self._rk_num_items: Any = None
        super().__init__(*args, **kwargs)
        if rk_preset is not None or self.rk_kwargs:
            given = self.optimizer is not None or getattr(self, "optimizer_cls_and_kwargs", None) is not None
            if given:
                raise ValueError(
                    "RungeKuttaTrainer got both an optimizer (optimizers= or optimizer_cls_and_kwargs=) "
                    "and rk_preset/rk_kwargs; give one of them"
                )
        if self.optimizer is not None:
            check_stagewise_optimizer(self.optimizer)
        if getattr(self, "is_deepspeed_enabled", False):
            raise NotImplementedError(
                "RungeKuttaTrainer does not support DeepSpeed, which replaces the optimizer and its step; "
                "use DDP or FSDP"
            )
        self.callback_handler.callbacks.insert(0, _CompleteStep(self))  # first: others see the full step
        self.callback_handler.callbacks.append(_CaptureRNG(self))  # last: after other callbacks' draws

    # -- the optimizer -------------------------------------------------------------------------

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None and getattr(self, "optimizer_cls_and_kwargs", None) is None:
            opt_model = self.model if model is None else model
            kwargs = dict(self.rk_kwargs)
            weight_decay = kwargs.pop("weight_decay", self.args.weight_decay)
            decay = set(self.get_decay_parameter_names(opt_model))
            groups = [
                {
                    "params": [p for n, p in opt_model.named_parameters() if p.requires_grad and n in decay],
                    "weight_decay": weight_decay,
                },
                {
                    "params": [
                        p for n, p in opt_model.named_parameters() if p.requires_grad and n not in decay
                    ],
                    "weight_decay": 0.0,
                },
            ]
            groups = [group for group in groups if group["params"]]
            kwargs.setdefault("stagewise", True)
            self.optimizer = preset(self.rk_preset or "rk4", groups, lr=self.args.learning_rate, **kwargs)
        # transformers < 5 has create_optimizer(self), without the model
        optimizer = super().create_optimizer() if model is None else super().create_optimizer(model)
        check_stagewise_optimizer(optimizer)
        return optimizer

    @property
    def runge_kutta(self) -> RungeKutta:
        """The rkopt optimizer (inside accelerate's wrapper once training has started)."""
        return unwrap_optimizer(self.optimizer)

    # -- one batch for every evaluation ----------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, *args, **kwargs):
        # (epoch_iterator, num_batches, device) since transformers 4.48, without device before
        batch_samples, num_items_in_batch = super().get_batch_samples(
            epoch_iterator, num_batches, *args, **kwargs
        )
        self._rk_batches, self._rk_num_items = list(batch_samples), num_items_in_batch
        self._capture_rng()  # on_step_begin captures again, right before the first forward pass
        return batch_samples, num_items_in_batch

    def _capture_rng(self) -> None:
        inner = self.runge_kutta
        if inner.step_complete:
            inner.capture_rng_state()

    def _sync_context(self, model: torch.nn.Module, last: bool) -> Any:
        """Gradient synchronisation as Trainer does it: only at a step's last micro-batch."""
        self.accelerator.gradient_state._set_sync_gradients(last)
        if last or self.accelerator.gradient_state.plugin_kwargs.get("sync_each_batch", False):
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model=model)

    def _clip(self, model: torch.nn.Module) -> None:
        if self.args.max_grad_norm > 0:
            clip = getattr(self, "_clip_grad_norm", None)
            if clip is not None:
                clip(model)
            else:  # transformers < 5
                self.accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)

    def _complete_runge_kutta_step(self) -> None:
        """Evaluations 2..s of the step begun by Trainer's ``optimizer.step()``, on its batch."""
        inner = self.runge_kutta
        if inner.step_complete:  # one-evaluation steps (Euler), or a step a GradScaler skipped
            return
        if not self._rk_batches:
            inner.abort_step()
            raise RuntimeError(
                "RungeKuttaTrainer found a Runge–Kutta step in progress but no batch to continue it on "
                "(was get_batch_samples bypassed?); the step was aborted and θ_n restored"
            )
        model = self.model_wrapped
        try:
            while not inner.step_complete:
                model.zero_grad()
                for index, inputs in enumerate(self._rk_batches):
                    last = index == len(self._rk_batches) - 1
                    with (
                        self._sync_context(model, last),
                        frozen_buffers(self.model, enabled=self.rk_freeze_buffers),
                    ):
                        self.training_step(model, inputs, self._rk_num_items)
                    self.current_flos += float(self.floating_point_ops(inputs))
                self._clip(model)
                self.optimizer.step()
        except BaseException:
            inner.abort_step()  # θ_n back (a no-op if rkopt already ended the step)
            raise
