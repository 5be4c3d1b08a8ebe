"""The training loop: NaN/inf step skipping with counts per source, the stop after N in a row, per-sample
seeds, and run_training's exact resume with every step logged once."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from hf_personsearch.data.sampler import HybridSampler
from hf_personsearch.training.checkpoints import CheckpointError, list_checkpoints, resolve_resume_path
from hf_personsearch.training.loop import (
    LOSS_LOG_FILE,
    LoopSettings,
    NonFiniteGuard,
    NonFiniteLossError,
    SeededSampleDataset,
    SeededSampleStream,
    SingleSourceDataset,
    TrainingData,
    check_processes_agree,
    describe_disagreement,
    keep_log_until,
    move_to_device,
    run_training,
    train_step,
)
from hf_personsearch.training.optim import build_optimizer, build_scheduler


def quadratic_forward(model, batch):
    loss = (model.weight * batch["pixel_values"]).sum() ** 2
    return loss, {"quadratic": loss}


def make_step_parts():
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(2, 1, bias=False)
    nn.init.constant_(model.weight, 1.0)
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0})
    scheduler = build_scheduler(optimizer, {"name": "constant", "warmup_steps": 0}, 10)
    return accelerator, *accelerator.prepare(model, optimizer, scheduler)


def batch(x0: float, x1: float, source: str) -> dict:
    return {"pixel_values": torch.tensor([[x0, x1]]), "sources": [source]}


def test_finite_step_matches_hand_computed_sgd_update_with_accumulation():
    accelerator, model, optimizer, scheduler = make_step_parts()
    guard = NonFiniteGuard()
    # loss_i = (w . x_i)^2, w = (1, 1); mean over 2 micro-batches; grad = mean of 2 (w.x_i) x_i
    micro = [batch(1.0, 2.0, "ecp"), batch(0.5, 0.0, "msmt17")]
    result = train_step(accelerator, model, optimizer, scheduler, micro, guard, forward=quadratic_forward)
    grad = (2 * 3.0 * torch.tensor([1.0, 2.0]) + 2 * 0.5 * torch.tensor([0.5, 0.0])) / 2
    assert torch.allclose(model.weight.detach()[0], torch.tensor([1.0, 1.0]) - 0.1 * grad)
    assert not result.skipped and result.num_images == 2
    assert result.loss_terms["quadratic"] == pytest.approx((9.0 + 0.25) / 2)


class ModelWithDomainClassifier(nn.Module):
    """A feature weight and a domain classifier weight, like PersonSearchPretrainModel's split."""

    def __init__(self):
        super().__init__()
        self.features = nn.Linear(1, 1, bias=False)
        self.classifier = nn.Linear(1, 1, bias=False)
        nn.init.constant_(self.features.weight, 1.0)
        nn.init.constant_(self.classifier.weight, 1.0)

    def domain_classifier_parameters(self):
        return list(self.classifier.parameters())


def test_gradient_clipping_leaves_the_domain_classifiers_out():
    accelerator = Accelerator(cpu=True)
    model = ModelWithDomainClassifier()
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0})
    scheduler = build_scheduler(optimizer, {"name": "constant", "warmup_steps": 0}, 10)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def forward(model, batch):  # d/d features = 30, d/d classifier = 40
        loss = 30.0 * model.features.weight.sum() + 40.0 * model.classifier.weight.sum()
        return loss, {"loss": loss}

    result = train_step(
        accelerator, model, optimizer, scheduler, [batch(1.0, 1.0, "ecp")], NonFiniteGuard(), 3.0, forward
    )
    # only the feature gradient counts in the norm (30, not 50) and is clipped to 3; the classifier's is not
    assert result.grad_norm == pytest.approx(30.0)
    assert model.features.weight.item() == pytest.approx(1.0 - 0.1 * 3.0)
    assert model.classifier.weight.item() == pytest.approx(1.0 - 0.1 * 40.0)


def test_run_training_lists_the_clipped_parameters_once_and_clips_every_step(tmp_path, monkeypatch):
    """Listing the parameters to clip unwraps the model and walks its modules (1-2 ms a step for the CPU
    benchmark's model): run_training lists them once and clips every step with that list."""
    from hf_personsearch.training import loop

    listings, clipped = [], []
    original = loop.clipped_parameters
    monkeypatch.setattr(loop, "clipped_parameters", lambda *args: listings.append(1) or original(*args))
    accelerator = Accelerator(cpu=True)
    model = ModelWithDomainClassifier()
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0})
    scheduler = build_scheduler(optimizer, {"name": "constant", "warmup_steps": 0}, 4)
    monkeypatch.setattr(accelerator, "clip_grad_norm_", lambda parameters, norm: clipped.append(parameters) or 0.0)
    data = TrainingData(SingleSourceDataset(NoisyItems()), HybridSampler([7], seed=3), stack)
    settings = LoopSettings(max_steps=4, batch_size=2, seed=3, checkpoint_every=4, max_grad_norm=1.0)

    def forward(model, batch):
        loss = model.features(batch["pixel_values"][:, :1]).sum() + model.classifier.weight.sum()
        return loss, {"loss": loss}

    run_training(accelerator, model, optimizer, scheduler, data, settings, tmp_path, name="test", forward=forward)
    assert listings == [1]
    assert len(clipped) == 4 and all(parameters is clipped[0] for parameters in clipped)
    assert clipped[0] == [model.features.weight]  # the domain classifier left out, as train_step's default


def test_nonfinite_step_is_skipped_counted_by_source_and_stops_after_n_in_a_row():
    accelerator, model, optimizer, scheduler = make_step_parts()
    guard = NonFiniteGuard(max_consecutive=3)
    bad = [batch(float("nan"), 1.0, "crowdhuman"), batch(1.0, 1.0, "luperson")]
    result = train_step(accelerator, model, optimizer, scheduler, bad, guard, forward=quadratic_forward)
    assert result.skipped and torch.equal(model.weight.detach(), torch.ones(1, 2))  # no update at all
    assert model.weight.grad is None and scheduler.scheduler.last_epoch == 0  # nothing stepped
    assert guard.state_dict() == {"skipped_steps": 1, "consecutive": 1, "by_source": {"crowdhuman": 1, "luperson": 1}}
    train_step(accelerator, model, optimizer, scheduler, [batch(1.0, 0.0, "ecp")], guard, forward=quadratic_forward)
    assert guard.consecutive == 0 and guard.skipped_steps == 1  # a finite step resets the run of failures
    inf = [batch(float("inf"), 0.0, "crowdhuman")]
    train_step(accelerator, model, optimizer, scheduler, inf, guard, forward=quadratic_forward)
    train_step(accelerator, model, optimizer, scheduler, inf, guard, forward=quadratic_forward)
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps \(4 skipped in all; batches by source: "):
        train_step(accelerator, model, optimizer, scheduler, inf, guard, forward=quadratic_forward)
    restored = NonFiniteGuard()
    restored.load_state_dict(guard.state_dict())
    assert restored.by_source == {"crowdhuman": 4, "luperson": 1}


class RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, key):
        return {"value": float(torch.rand(()))}


def test_seeded_stream_resumes_with_the_same_keys_and_augmentation_draws():
    def draws(start: int, count: int, rank: int = 0) -> list:
        stream = SeededSampleStream(HybridSampler([3, 4], seed=5, num_replicas=2, rank=rank), seed=5, rank=rank)
        stream.skip_to(start)
        dataset = SeededSampleDataset(RandomItems())
        out = []
        for pair, _ in zip(stream, range(count)):
            item = dataset[pair]
            out.append((item["sample_key"], item["value"]))
        return out

    state = torch.get_rng_state()
    full = draws(0, 8)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG (the model's) is untouched
    assert draws(5, 3) == full[5:]  # a restart at sample 5 continues identically
    assert [key for key, _ in draws(0, 8, rank=1)] != [key for key, _ in full]  # ranks draw other samples
    assert len({value for _, value in full}) == 8  # every sample has its own seed


def test_seeded_samples_seed_the_cpu_generator_only(monkeypatch):
    """The sample's draws come from the CPU generator seeded with the sample's seed; the CUDA generators (the
    training step's, which fork_rng(devices=[]) does not restore) are never reseeded by the data."""
    cuda_seeds = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", cuda_seeds.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", cuda_seeds.append)
    item = SeededSampleDataset(RandomItems())[(3, 1234)]
    expected = float(torch.rand((), generator=torch.Generator().manual_seed(1234)))
    assert item == {"value": expected, "sample_key": 3}
    assert cuda_seeds == []


def test_move_to_device_walks_nested_batches():
    batch_in = {"a": torch.ones(1), "labels": [{"boxes": torch.zeros(1, 4)}], "sources": ["ecp"]}
    moved = move_to_device(batch_in, torch.device("cpu"))
    assert moved["sources"] == ["ecp"] and torch.equal(moved["labels"][0]["boxes"], torch.zeros(1, 4))


class NoisyItems(torch.utils.data.Dataset):
    """Item i: its index plus augmentation noise (torch.rand: seeded per sample by the loop)."""

    def __len__(self):
        return 7

    def __getitem__(self, index):
        return {"pixel_values": torch.full((1, 2), float(index)) + torch.rand(1, 2)}


def stack(items):
    return {"pixel_values": torch.cat([item["pixel_values"] for item in items])}


def noisy_forward(model, batch):
    # torch.randn draws from the global RNG, like the model's RPN / RoI sampling
    loss = (model(batch["pixel_values"]) + torch.randn(())).pow(2).mean()
    return loss, {"fit": loss}


def train_tiny(output_dir, max_steps=6, **kwargs):
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0})
    scheduler = build_scheduler(optimizer, {"name": "step", "warmup_steps": 2, "milestones": [4]}, max_steps)
    data = TrainingData(SingleSourceDataset(NoisyItems()), HybridSampler([7], seed=3), stack)
    settings = LoopSettings(
        max_steps=max_steps, batch_size=2, seed=3, gradient_accumulation_steps=2, checkpoint_every=2
    )
    steps = []
    outcome = run_training(
        accelerator,
        model,
        optimizer,
        scheduler,
        data,
        settings,
        output_dir,
        name="test",
        forward=noisy_forward,
        after_step=steps.append,
        **kwargs,
    )
    return outcome, steps


def logged(output_dir):
    return [json.loads(line) for line in (output_dir / LOSS_LOG_FILE).read_text().splitlines()]


def test_run_training_resumes_exactly_and_logs_every_step_once(tmp_path):
    straight, _ = train_tiny(tmp_path / "straight", script_state={"history": ["a"]})
    assert straight.finished and straight.step == 6
    assert [p.name for p in list_checkpoints(tmp_path / "straight")] == [f"checkpoint-0000000{s}" for s in (2, 4, 6)]

    # a session stopped after 5 steps (checkpoints 2, 4, 5), then "killed": checkpoint 5 never written, and
    # a half-written log line
    interrupted = tmp_path / "interrupted"
    state = {"history": ["a"]}
    stopped, steps = train_tiny(interrupted, stop_after_steps=5, script_state=state)
    assert (stopped.finished, stopped.step, steps) == (False, 5, [1, 2, 3, 4, 5])
    shutil.rmtree(interrupted / "checkpoint-00000005")
    with open(interrupted / LOSS_LOG_FILE, "a") as file:
        file.write('{"step": 6, "los')
    state["history"].append("written after checkpoint 4: not in it")

    restored = {}
    resumed, steps = train_tiny(interrupted, resume_from=interrupted / "checkpoint-00000004", script_state=restored)
    assert (resumed.finished, resumed.step, steps) == (True, 6, [5, 6])
    assert restored == {"history": ["a"]}  # the script state of checkpoint 4
    assert logged(interrupted) == logged(tmp_path / "straight")  # steps 1..6 once each, identical losses
    assert [r["step"] for r in logged(interrupted)] == [1, 2, 3, 4, 5, 6]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert len({r["loss"] for r in logged(interrupted)}) == 6


def test_on_device_hook_runs_on_every_micro_batch_before_the_forward(tmp_path):
    """TrainingData.on_device (the pre-training's photometric step) sees each moved micro-batch once, and the
    forward gets what it returns."""
    seen, forwarded = [], []

    def halve(batch):
        seen.append(batch["pixel_values"].clone())
        return {"pixel_values": batch["pixel_values"] / 2}

    def recording_forward(model, batch):
        forwarded.append(batch["pixel_values"])
        return noisy_forward(model, batch)

    accelerator = Accelerator(cpu=True)
    model = nn.Linear(2, 1)
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0})
    scheduler = build_scheduler(optimizer, {"name": "step", "warmup_steps": 0, "milestones": []}, 2)
    data = TrainingData(SingleSourceDataset(NoisyItems()), HybridSampler([7], seed=3), stack, on_device=halve)
    settings = LoopSettings(max_steps=2, batch_size=2, seed=3, gradient_accumulation_steps=2, checkpoint_every=2)
    run_training(
        accelerator, model, optimizer, scheduler, data, settings, tmp_path, name="test", forward=recording_forward
    )
    assert len(seen) == len(forwarded) == 4  # 2 steps x 2 micro-batches
    for before, after in zip(seen, forwarded):
        assert torch.equal(after, before / 2)


def test_keep_log_until_drops_later_and_broken_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    keep_log_until(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    keep_log_until(path, 0)  # a fresh run in the same folder starts the log anew
    assert path.read_text() == ""


def test_single_source_dataset_rejects_other_sources():
    with pytest.raises(KeyError, match="names source 1, only source 0 exists"):
        SingleSourceDataset(NoisyItems())[(1, 0)]


def test_resume_latest_falls_back_past_a_damaged_rng_file_and_stays_exact(tmp_path, caplog):
    """One flipped byte in the newest checkpoint's RNG file: without checksums accelerate restores a wrong
    (or no) RNG state and the run continues, no longer exact; with them, resume uses the previous checkpoint."""
    straight, _ = train_tiny(tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    train_tiny(interrupted, stop_after_steps=5)  # checkpoints 2, 4, 5
    rng_file = interrupted / "checkpoint-00000005" / "random_states_0.pkl"
    data = bytearray(rng_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rng_file.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match=r"checkpoint-00000005: not a complete checkpoint: random_states_0"):
        resolve_resume_path(interrupted / "checkpoint-00000005", interrupted)
    with caplog.at_level(logging.WARNING):
        latest = resolve_resume_path("latest", interrupted)
    assert latest.name == "checkpoint-00000004" and "random_states_0.pkl does not match its sha256" in caplog.text
    resumed, steps = train_tiny(interrupted, resume_from=latest)
    assert steps == [5, 6] and logged(interrupted) == logged(tmp_path / "straight")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_check_processes_agree_passes_on_one_process_and_names_every_difference():
    check_processes_agree(Accelerator(cpu=True), {"records": 3}, "the data")  # one process: nothing to compare
    lines = describe_disagreement([{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2}])
    assert lines == [
        "'a': process 0 has 1, process 1 has 1, process 2 has 2",
        "'b': process 0 has x, process 1 has y, process 2 has <missing>",
    ]
    assert describe_disagreement([{"a": 1}, {"a": 1}]) == []


def test_resume_with_other_settings_says_which_and_neutral_ones_are_quiet(tmp_path, caplog):
    config = {"optimizer": {"lr": 0.01}, "training": {"batch_size": 2, "log_every": 10}, "checkpointing": {"every": 2}}
    train_tiny(tmp_path / "run", max_steps=4, stop_after_steps=2, tracker_config=config)
    latest = tmp_path / "run" / "checkpoint-00000002"
    quiet = {**config, "training": {"batch_size": 2, "log_every": 1}, "checkpointing": {"every": 1}}
    with caplog.at_level(logging.WARNING):
        train_tiny(tmp_path / "run", max_steps=4, resume_from=latest, tracker_config=quiet, stop_after_steps=3)
    assert "settings other than" not in caplog.text  # how often it logs and saves changes nothing computed
    changed = {**config, "optimizer": {"lr": 0.02, "momentum": 0.5}}
    with caplog.at_level(logging.WARNING):
        train_tiny(tmp_path / "run", max_steps=4, resume_from=latest, tracker_config=changed)
    assert (
        "settings other than the checkpoint's run: optimizer.lr: 0.01 -> 0.02; optimizer.momentum: missing -> 0.5"
        in (caplog.text)
    )


def test_a_key_added_since_the_checkpoint_is_no_change_at_the_value_older_runs_used():
    from hf_personsearch.training.loop import config_changes

    saved = {"optimizer.lr": 0.01}  # a checkpoint from before data.canvas_in_step existed
    assert config_changes(saved, {"optimizer.lr": 0.01, "data.canvas_in_step": False}) == []
    assert config_changes(saved, {"optimizer.lr": 0.01, "data.canvas_in_step": True}) == [
        "data.canvas_in_step: False -> True"
    ]
    assert config_changes(saved, {"optimizer.lr": 0.01}) == []  # fine-tuning's config has no such key
    assert config_changes(saved, {"optimizer.lr": 0.01, "data.size_divisor": 1}) == []
    assert config_changes(saved, {"optimizer.lr": 0.01, "data.size_divisor": 128}) == ["data.size_divisor: 1 -> 128"]
