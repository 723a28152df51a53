"""What a step reports: its failures and the work counters."""

from __future__ import annotations

from dataclasses import dataclass


class NonFiniteStepError(FloatingPointError):
    """A stage produced a non-finite loss, direction (where b_i = 0) or update; the parameters were
    restored to θ_n."""


class StepRejectedError(RuntimeError):
    """The step-size policy rejected the step and gave up (error control after ``max_retries``
    rejections with ``on_max_retries="raise"``); the parameters were restored to θ_n."""


class StepInProgressError(RuntimeError):
    """The operation needs the optimizer between steps, but a stage-wise step is in progress."""


@dataclass
class Counters:
    """Work done by the optimizer, saved in ``state_dict`` under ``"counters"``.

    Attributes:
        steps: accepted steps (parameter updates).
        grad_evals: gradient evaluations (closure calls, or ``step()`` calls in stage-wise mode),
            probes included, of every step: also of steps that were skipped or raised, since that
            work was spent.
        rejected_steps: attempts the step-size policy rejected (each retried on the same batch).
        skipped_steps: steps dropped because of a non-finite value (``on_nonfinite="skip"``).
    """

    steps: int = 0
    grad_evals: int = 0
    rejected_steps: int = 0
    skipped_steps: int = 0


class StaleGradientError(RuntimeError):
    """An evaluation did not produce the gradients the step would integrate: no backward since the
    previous one, or a backward that accumulated onto the previous evaluation's gradients."""
