"""RungeKuttaTrainer: Hugging Face Trainer with every Runge–Kutta evaluation on the step's batch.

A tiny randomly initialised GPT-2 on synthetic token sequences (arithmetic progressions mod the
vocabulary, so the loss can fall); nothing is downloaded.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import rkopt

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from rkopt.integrations import unwrap_optimizer  # noqa: E402
from rkopt.integrations.transformers import RungeKuttaTrainer  # noqa: E402

VOCAB, SEQ = 50, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster, and fair to the other processes on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Progressions(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=generator)
        stride = torch.randint(1, 4, (n, 1), generator=generator)
        self.tokens = (start + stride * torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def gpt2(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        vocab_size=VOCAB,
        n_positions=32,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def arguments(tmp_path, **overrides) -> transformers.TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=6,
        learning_rate=0.5,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        seed=0,
    )
    settings.update(overrides)
    return transformers.TrainingArguments(**settings)


class Recorder:
    """Each forward pass's input_ids, with the number of Runge–Kutta steps completed before it."""

    def __init__(self, model: nn.Module) -> None:
        self.trainer: RungeKuttaTrainer | None = None
        self.calls: list[tuple[int, torch.Tensor]] = []
        self.kwargs: list[dict] = []  # the first forward's keyword arguments of each step
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        steps = unwrap_optimizer(self.trainer.optimizer).counters.steps
        if not self.calls or self.calls[-1][0] != steps:
            self.kwargs.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
        self.calls.append((steps, kwargs["input_ids"].clone()))

    def by_step(self) -> list[list[torch.Tensor]]:
        steps: dict[int, list[torch.Tensor]] = {}
        for step, ids in self.calls:
            steps.setdefault(step, []).append(ids)
        return list(steps.values())


def train(tmp_path, model=None, dataset=None, **kwargs):
    model = gpt2() if model is None else model
    recorder = Recorder(model)
    args = kwargs.pop("args", None) or arguments(tmp_path, **kwargs.pop("training", {}))
    trainer = RungeKuttaTrainer(model=model, args=args, train_dataset=dataset or Progressions(), **kwargs)
    recorder.trainer = trainer
    trainer.train()
    return trainer, recorder


def assert_same_batch_per_step(recorder: Recorder, micro_batches: int = 1) -> list[list[torch.Tensor]]:
    """Every evaluation of a step ran forward on the same micro-batches, in the same order."""
    steps = recorder.by_step()
    for calls in steps:
        assert len(calls) % micro_batches == 0
        first = calls[:micro_batches]
        for start in range(0, len(calls), micro_batches):
            for ours, theirs in zip(calls[start : start + micro_batches], first):
                assert torch.equal(ours, theirs)
    for before, after in itertools.pairwise(steps):  # and a new batch for each step
        assert not torch.equal(before[0], after[0])
    return steps


def test_rk4_every_stage_sees_the_step_batch_and_loss_decreases(tmp_path):
    trainer, recorder = train(tmp_path, rk_preset="rk4", training=dict(max_steps=30, learning_rate=1.0))
    steps = assert_same_batch_per_step(recorder)
    assert [len(calls) for calls in steps] == [4] * 30
    optimizer = trainer.runge_kutta
    assert optimizer.stagewise and optimizer.step_complete
    assert trainer.state.global_step == optimizer.counters.steps == 30  # one Trainer step per RK step
    assert optimizer.counters.grad_evals == 4 * 30 == len(recorder.calls)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5


def test_scheduler_advances_once_per_runge_kutta_step(tmp_path):
    trainer, _ = train(
        tmp_path,
        rk_preset="rk4",
        training=dict(max_steps=8, warmup_steps=4, lr_scheduler_type="linear", learning_rate=0.4),
    )
    assert trainer.lr_scheduler.last_epoch == 8 == trainer.runge_kutta.counters.steps
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    # linear warm-up over 4 RK steps, then linear decay to 0 at step 8 (the lr each step used)
    assert logged == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.3, 0.2, 0.1])
    assert trainer.runge_kutta.param_groups[0]["h"] == pytest.approx(0.1)  # h of the last step


def test_matches_closure_mode_on_the_same_batches_with_clipping(tmp_path):
    """Trainer's clipping acts on every evaluation's gradient: the same trajectory as a closure
    that clips, on the batches the trainer drew."""
    trainer, recorder = train(tmp_path, rk_preset="rk4", training=dict(max_grad_norm=0.5))
    assert_same_batch_per_step(recorder)
    model = gpt2()
    optimizer = rkopt.RK4(model.parameters(), lr=0.5)
    for kwargs in recorder.kwargs:  # input_ids, labels and Trainer's num_items_in_batch

        def closure():
            optimizer.zero_grad()
            loss = model(**kwargs).loss
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            return loss

        optimizer.step(closure)
    for ours, theirs in zip(trainer.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert optimizer.counters.grad_evals == trainer.runge_kutta.counters.grad_evals


def test_dropout_masks_are_the_same_in_every_stage_of_a_step(tmp_path):
    model = gpt2(dropout=0.3)
    masks: list[tuple[int, torch.Tensor]] = []
    trainer_box: list[RungeKuttaTrainer] = []

    def hook(module, inputs, output):
        masks.append((unwrap_optimizer(trainer_box[0].optimizer).counters.steps, output == 0))

    model.transformer.drop.register_forward_hook(hook)
    trainer = RungeKuttaTrainer(
        model=model, args=arguments(tmp_path, max_steps=4), train_dataset=Progressions()
    )
    trainer_box.append(trainer)
    trainer.train()
    by_step: dict[int, list[torch.Tensor]] = {}
    for step, mask in masks:
        by_step.setdefault(step, []).append(mask)
    assert [len(stage_masks) for stage_masks in by_step.values()] == [4] * 4
    for stage_masks in by_step.values():
        assert stage_masks[0].any()
        assert all(torch.equal(mask, stage_masks[0]) for mask in stage_masks)
    firsts = [stage_masks[0] for stage_masks in by_step.values()]
    assert not torch.equal(firsts[0], firsts[1])  # fresh noise for each step


def test_gradient_accumulation_uses_the_same_micro_batches_in_every_stage(tmp_path):
    """batch 4 × 2 accumulation steps follows the trajectory of batch 8 without accumulation."""
    accumulated, recorder = train(
        tmp_path / "a",
        rk_preset="rk4",
        training=dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=5),
    )
    steps = assert_same_batch_per_step(recorder, micro_batches=2)
    assert [len(calls) for calls in steps] == [8] * 5  # 4 stages × 2 micro-batches
    assert all(not torch.equal(calls[0], calls[1]) for calls in steps)
    assert accumulated.runge_kutta.counters.steps == accumulated.state.global_step == 5
    assert accumulated.runge_kutta.counters.grad_evals == 20
    whole, _ = train(tmp_path / "b", rk_preset="rk4", training=dict(max_steps=5))
    for ours, theirs in zip(accumulated.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_remainder_at_the_end_of_an_epoch(tmp_path):
    """8 micro-batches per epoch in groups of 3: the last step accumulates 2, in all 4 stages."""
    trainer, recorder = train(
        tmp_path, rk_preset="rk4", training=dict(gradient_accumulation_steps=3, max_steps=4)
    )
    steps = recorder.by_step()
    assert [len(calls) for calls in steps] == [12, 12, 8, 12]
    for calls, micro_batches in zip(steps, [3, 3, 2, 3]):
        assert all(torch.equal(calls[i], calls[i % micro_batches]) for i in range(len(calls)))
    assert trainer.runge_kutta.counters.grad_evals == 16 and trainer.state.global_step == 4


@pytest.mark.parametrize(
    ("name", "evaluations"),
    [("rk4-dal", None), ("euler", [1] * 6), ("rk4-full", None)],
)
def test_presets_with_probes_and_retries_keep_the_batch(tmp_path, name, evaluations):
    trainer, recorder = train(tmp_path, rk_preset=name, training=dict(learning_rate=2.0))
    steps = assert_same_batch_per_step(recorder)
    counters = trainer.runge_kutta.counters
    assert len(steps) == counters.steps + counters.skipped_steps == trainer.state.global_step == 6
    assert sum(len(calls) for calls in steps) == counters.grad_evals
    if evaluations is not None:
        assert [len(calls) for calls in steps] == evaluations
    if name == "rk4-dal":
        assert len(steps[0]) == 5 and len(steps[1]) == 4  # the first step's curvature probe


def test_dopri5_error_control_retries_on_the_same_batch(tmp_path):
    trainer, recorder = train(
        tmp_path,
        rk_preset="dopri5-adaptive",
        rk_kwargs={"rtol": 1e-4, "atol": 1e-7},
        training=dict(learning_rate=5.0, max_steps=3),
    )
    assert trainer.runge_kutta.counters.rejected_steps > 0
    assert_same_batch_per_step(recorder)


def test_optimizer_given_through_optimizers_tuple_with_its_scheduler(tmp_path):
    model = gpt2()
    optimizer = rkopt.RK4(model.parameters(), lr=0.2, stagewise=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    trainer, recorder = train(tmp_path, model=model, optimizers=(optimizer, scheduler))
    assert trainer.runge_kutta is optimizer
    assert_same_batch_per_step(recorder)
    assert optimizer.counters.steps == 6 and optimizer.counters.grad_evals == 24
    assert scheduler.last_epoch == 6
    assert optimizer.param_groups[0]["h"] == pytest.approx(0.05)  # lr of steps 5-6: 0.2 · 0.5²


def test_optimizer_cls_and_kwargs(tmp_path):
    trainer, recorder = train(
        tmp_path,
        optimizer_cls_and_kwargs=(rkopt.Heun, {"lr": 0.3, "stagewise": True}),
    )
    assert type(trainer.runge_kutta) is rkopt.Heun
    assert [len(calls) for calls in assert_same_batch_per_step(recorder)] == [2] * 6


def test_rk_kwargs_and_weight_decay_groups(tmp_path):
    trainer, _ = train(
        tmp_path,
        rk_preset="rk4-momentum",
        rk_kwargs={"momentum": 0.5, "weight_decay": 0.01},
        training=dict(max_steps=2),
    )
    groups = trainer.runge_kutta.param_groups
    assert [group["weight_decay"] for group in groups] == [0.01, 0.0]  # biases and norms: no decay
    assert all(group["momentum"] == 0.5 for group in groups)


def test_batchnorm_statistics_count_once_per_step(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))

        def forward(self, x, labels):
            return {"loss": nn.functional.mse_loss(self.body(x), labels)}

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            generator = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(32, 4, generator=generator), torch.randn(32, 1, generator=generator)

        def __len__(self):
            return 32

        def __getitem__(self, index):
            return {"x": self.x[index], "labels": self.y[index]}

    torch.manual_seed(0)
    net = Net()
    trainer = RungeKuttaTrainer(model=net, args=arguments(tmp_path, max_steps=5), train_dataset=Data())
    trainer.train()
    assert trainer.runge_kutta.counters.grad_evals == 20
    assert int(net.body[1].num_batches_tracked) == 5


def test_a_non_finite_stage_restores_theta_n_raises_or_skips(tmp_path):
    """lr = 1e30 sends stage 2's point to infinity: never a silently wrong step."""
    model = gpt2()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = RungeKuttaTrainer(
        model=model, args=arguments(tmp_path, learning_rate=1e30), train_dataset=Progressions()
    )
    with pytest.raises(rkopt.NonFiniteStepError):
        trainer.train()
    assert trainer.runge_kutta.step_complete
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    skipping, _ = train(
        tmp_path / "skip", rk_kwargs={"on_nonfinite": "skip"}, training=dict(learning_rate=1e30, max_steps=2)
    )
    counters = skipping.runge_kutta.counters
    assert (counters.steps, counters.skipped_steps, skipping.state.global_step) == (0, 2, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, skipping.model.parameters()))


def test_refuses_a_closure_mode_optimizer(tmp_path):
    model = gpt2()
    with pytest.raises(ValueError, match="stagewise=True"):
        RungeKuttaTrainer(
            model=model,
            args=arguments(tmp_path),
            train_dataset=Progressions(),
            optimizers=(rkopt.RK4(model.parameters(), lr=0.1), None),
        )
    trainer = RungeKuttaTrainer(
        model=model,
        args=arguments(tmp_path),
        train_dataset=Progressions(),
        optimizer_cls_and_kwargs=(rkopt.RK4, {"lr": 0.1}),
    )
    with pytest.raises(ValueError, match="stagewise=True"):
        trainer.train()


def test_refuses_other_optimizers_and_ambiguous_choices(tmp_path):
    model = gpt2()
    with pytest.raises(TypeError, match="rkopt optimizer"):
        RungeKuttaTrainer(
            model=model,
            args=arguments(tmp_path),
            train_dataset=Progressions(),
            optimizers=(torch.optim.AdamW(model.parameters()), None),
        )
    with pytest.raises(ValueError, match="give one of them"):
        RungeKuttaTrainer(
            model=model,
            args=arguments(tmp_path),
            train_dataset=Progressions(),
            rk_preset="rk4",
            optimizers=(rkopt.RK4(model.parameters(), lr=0.1, stagewise=True), None),
        )
    with pytest.raises(ValueError, match="unknown rk_preset"):
        RungeKuttaTrainer(model=model, args=arguments(tmp_path), rk_preset="rk5")


def test_accelerate_wraps_the_optimizer_and_unwrap_finds_it(tmp_path):
    trainer, _ = train(tmp_path, rk_preset="rk4", training=dict(max_steps=1))
    from accelerate.optimizer import AcceleratedOptimizer

    assert isinstance(trainer.optimizer, AcceleratedOptimizer)
    assert unwrap_optimizer(trainer.optimizer) is trainer.optimizer.optimizer
    assert trainer.runge_kutta is trainer.optimizer.optimizer
    with pytest.raises(TypeError):
        unwrap_optimizer(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1))


def test_checkpoint_between_steps_and_resume(tmp_path):
    """Checkpoints are written between Runge–Kutta steps (state_dict works) and a resumed run
    continues the same trajectory, dropout masks included."""
    straight, _ = train(
        tmp_path / "straight", model=gpt2(dropout=0.1), rk_preset="rk4-full", training=dict(max_steps=3)
    )
    train(
        tmp_path / "resumed",
        model=gpt2(dropout=0.1),
        rk_preset="rk4-full",
        training=dict(max_steps=3, save_strategy="steps", save_steps=2, save_only_model=False),
    )
    resumed = RungeKuttaTrainer(
        model=gpt2(dropout=0.1),
        args=arguments(tmp_path / "resumed", max_steps=3),
        train_dataset=Progressions(),
        rk_preset="rk4-full",
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    assert resumed.runge_kutta.counters.steps == 3
    assert resumed.runge_kutta.counters.grad_evals == straight.runge_kutta.counters.grad_evals == 13
    for ours, theirs in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_is_first_evaluation_reads_through_accelerate_wrapper():
    import accelerate
    from accelerate.optimizer import AcceleratedOptimizer

    optimizer = rkopt.RK4([nn.Parameter(torch.ones(2))], lr=0.1, stagewise=True)
    wrapped = accelerate.Accelerator(cpu=True).prepare(optimizer)
    assert isinstance(wrapped, AcceleratedOptimizer)
    optimizer.evaluation_index = 2  # as inside a step, past its first evaluation
    try:
        assert not rkopt.is_first_evaluation(wrapped)
    finally:
        optimizer.evaluation_index = None
