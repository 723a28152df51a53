"""Workloads: fixed seeded splits, seeded batches, the offline path, BatchNorm once per step."""

from __future__ import annotations

import copy
import hashlib
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import rkopt
from rkopt.bench.data import (
    DatasetUnavailableError,
    DataSource,
    load_images,
    load_torchvision,
    verify_archives,
)
from rkopt.bench.errors import ConfigError
from rkopt.bench.runner import make_closure
from rkopt.bench.workloads import WORKLOADS, ClassificationTask, get_workload


@pytest.mark.parametrize(
    ("name", "sizes", "shape"),
    [
        ("digits", (1197, 300, 300), (1, 8, 8)),
        ("mnist5k", (3500, 500, 1000), (1, 28, 28)),
        ("mnist1d", (3500, 500, 1000), (1, 40)),
    ],
)
def test_offline_datasets_have_fixed_standardized_splits(environment, name, sizes, shape):
    data = load_images(name, environment.source)
    assert (len(data.train), len(data.validation), len(data.test)) == sizes
    assert data.input_shape == shape
    assert data.num_classes == 10
    assert set(data.train.targets.unique().tolist()) == set(range(10))
    assert abs(float(data.train.inputs.mean())) < 1e-3
    assert float(data.train.inputs.std()) == pytest.approx(1.0, abs=1e-3)
    load_images.cache_clear()  # a fresh load (from the .npz cache where there is one) is identical
    assert load_images(name, environment.source).fingerprint() == data.fingerprint()


def test_batches_are_seeded_and_cover_each_epoch_once(environment):
    data = load_images("digits", environment.source)
    task = ClassificationTask()

    def labels(seed: int, count: int) -> list[torch.Tensor]:
        batches = task.batches(data.train, 100, torch.Generator().manual_seed(seed))
        return [next(batches)[1] for _ in range(count)]

    assert all(torch.equal(a, b) for a, b in zip(labels(3, 5), labels(3, 5), strict=True))
    assert not torch.equal(labels(3, 1)[0], labels(4, 1)[0])
    epoch = torch.cat(labels(0, len(data.train) // 100))
    assert len(epoch) == 1100  # 11 full batches of the 1197 examples, none repeated
    batches = task.batches(data.train, 1197, torch.Generator().manual_seed(0))
    first, second = next(batches), next(batches)
    assert sorted(first[1].tolist()) == sorted(data.train.targets.tolist()) == sorted(second[1].tolist())


@pytest.mark.parametrize("download", [False, True])
def test_torchvision_offline_error_names_the_offline_workload(tmp_path, download):
    with pytest.raises(DatasetUnavailableError) as info:
        load_torchvision("mnist", DataSource(tmp_path / "empty", download=download))
    message = str(info.value)
    assert "mlp-mnist5k" in message
    assert str(tmp_path / "empty") in message
    assert ("--offline" in message) != download


def test_cached_archives_are_checksummed(tmp_path):
    archive = tmp_path / "train-images-idx3-ubyte.gz"
    archive.write_bytes(b"not the real file")
    dataset = SimpleNamespace(
        raw_folder=str(tmp_path), resources=[(archive.name, hashlib.md5(b"real").hexdigest())]
    )
    with pytest.raises(DatasetUnavailableError, match="checksum mismatch.*delete"):
        verify_archives(dataset)
    dataset.resources = [(archive.name, hashlib.md5(b"not the real file").hexdigest())]
    verify_archives(dataset)  # intact: no error


def test_cnn_bn_falls_back_to_mnist5k_offline(environment):
    with pytest.warns(UserWarning, match="mnist5k"):
        problem = get_workload("cnn-bn").problem(environment.source, {"width": 4}, seed=0)
    assert problem.data.name == "mnist5k"
    assert problem.model(problem.data.test.inputs[:2]).shape == (2, 10)


def _bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("optimizer", ["rk4", "rk4-full", "adam"])
def test_batchnorm_statistics_update_once_per_optimizer_step(environment, optimizer):
    problem = get_workload("cnn-bn").problem(environment.source, {"dataset": "digits", "width": 4}, seed=0)
    model, task = problem.model, problem.task
    opt = (
        rkopt.preset(optimizer, model.parameters(), 0.05)
        if optimizer != "adam"
        else torch.optim.Adam(model.parameters(), 1e-3)
    )
    batches = task.batches(problem.data.train, 32, torch.Generator().manual_seed(0))
    model.train()
    for step in range(1, 4):
        inputs, targets = next(batches)
        reference = copy.deepcopy(model)  # one forward pass at θ_n is what a step should record
        reference(inputs)
        opt.step(make_closure(model, task, opt, inputs, targets))
        for bn, expected in zip(_bn_layers(model), _bn_layers(reference), strict=True):
            assert int(bn.num_batches_tracked) == step
            torch.testing.assert_close(bn.running_mean, expected.running_mean)
            torch.testing.assert_close(bn.running_var, expected.running_var)
    if optimizer == "rk4":  # without frozen_buffers each of the 4 stages would count
        inputs, targets = next(batches)

        def naive() -> torch.Tensor:
            opt.zero_grad()
            loss = task.loss(model(inputs), targets)
            loss.backward()
            return loss

        opt.step(naive)
        assert int(_bn_layers(model)[0].num_batches_tracked) == 3 + 4


def test_every_stage_of_a_step_sees_the_steps_minibatch(environment):
    problem = get_workload("mlp-digits").problem(environment.source, {"hidden": [8]}, seed=0)
    seen: list[torch.Tensor] = []
    problem.model.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    opt = rkopt.preset("rk4", problem.model.parameters(), 0.1)
    batches = problem.task.batches(problem.data.train, 16, torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.step(make_closure(problem.model, problem.task, opt, *next(batches)))
    assert len(seen) == 8
    assert all(x is seen[0] for x in seen[:4]) and all(x is seen[4] for x in seen[4:])
    assert not torch.equal(seen[0], seen[4])


def test_charlm_learns_characters_of_the_standard_library(environment):
    options = {"context": 16, "width": 16, "heads": 2, "layers": 1, "corpus_chars": 20_000, "eval_windows": 8}
    problem = get_workload("charlm").problem(environment.source, options, seed=0)
    data, task = problem.data, problem.task
    assert data.name == "python-source"
    assert len(data.train) > 10 * len(data.validation) > 0
    assert torch.equal(data.train.inputs[1:], data.train.targets[:-1])  # next-character targets
    inputs, targets = next(task.batches(data.train, 4, torch.Generator().manual_seed(0)))
    assert inputs.shape == targets.shape == (4, 16)
    scores = task.evaluate(problem.model.eval(), data.validation, torch.device("cpu"))
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))
    assert 0.3 * data.num_classes < scores["perplexity"] < 3 * data.num_classes  # untrained: near uniform


def test_registry_has_the_issue_workloads_and_rejects_unknown_names():
    assert {
        "mlp-mnist",
        "mlp-fashion-mnist",
        "mlp-mnist5k",
        "mlp-digits",
        "mlp-mnist1d",
        "cnn-bn",
        "charlm",
    } <= set(WORKLOADS)
    with pytest.raises(ConfigError, match="valid workloads: .*mlp-digits"):
        get_workload("mlp-imagenet")
