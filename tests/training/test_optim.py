"""Optimiser and schedule builders against hand-computed learning rates."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hf_personsearch.training.optim import build_optimizer, build_scheduler, lr_factor, resolve_milestones


def lrs(schedule: dict, max_steps: int, base_lr: float = 1.0) -> list[float]:
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, {"name": "sgd", "lr": base_lr, "momentum": 0.9, "weight_decay": 0.0})
    scheduler = build_scheduler(optimizer, schedule, max_steps)
    values = []
    for _ in range(max_steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_then_step_decay_by_hand():
    schedule = {"name": "step", "warmup_steps": 4, "warmup_factor": 0.2, "milestones": [0.5, 8], "gamma": 0.1}
    # warm-up: 0.2 + (1 - 0.2) * step / 4; milestone 0.5 of 10 steps = step 5, then step 8
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01]
    assert lrs(schedule, 10) == pytest.approx(expected)


def test_cosine_by_hand():
    schedule = {"name": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.1}
    values = lrs(schedule, 5, base_lr=2.0)
    expected = [2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 5))) for s in range(5)]
    assert values == pytest.approx(expected)


def test_scheduler_state_resumes_exactly():
    schedule = {"name": "step", "warmup_steps": 3, "warmup_factor": 0.1, "milestones": [5], "gamma": 0.5}
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 1.0})
    scheduler = build_scheduler(optimizer, schedule, 10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = build_optimizer(nn.Linear(2, 2), {"name": "sgd", "lr": 1.0})
    fresh = build_scheduler(fresh_optimizer, schedule, 10)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == scheduler.get_last_lr() == [lr_factor(4, schedule, 10)] * 2


def test_parameter_groups_exclude_biases_and_frozen_from_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    optimizer = build_optimizer(model, {"name": "adamw", "lr": 0.1, "weight_decay": 0.05})
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])] and decay["weight_decay"] == 0.05
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0  # 2 biases + BN weight/bias


def test_bias_lr_factor_doubles_the_biases_but_not_normalisations_or_deformable_offsets():
    """AlignPS's bias_lr_mult=2: layer biases train at 2x lr (through the schedule too); GroupNorm and
    deformable-offset biases stay in the no-decay group at the base lr; factor 1 keeps the two groups."""
    from hf_personsearch.aligned_feature_aggregation import DeformableConv2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), DeformableConv2d(4, 2))
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.01, "weight_decay": 1e-3, "bias_lr_factor": 2.0})
    decay, no_decay, biases = optimizer.param_groups
    assert {id(p) for p in biases["params"]} == {id(model[0].bias), id(model[2].bias)}
    assert biases["lr"] == pytest.approx(0.02) and biases["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias), id(model[2].offset.bias)}
    assert no_decay["lr"] == decay["lr"] == pytest.approx(0.01)
    scheduler = build_scheduler(optimizer, {"name": "step", "milestones": [2], "gamma": 0.1}, 4)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([0.001, 0.001, 0.002])
    assert len(build_optimizer(model, {"name": "sgd", "lr": 0.01}).param_groups) == 2
    with pytest.raises(ValueError, match="bias_lr_factor must be > 0"):
        build_optimizer(model, {"name": "sgd", "lr": 0.01, "bias_lr_factor": 0})


def test_bad_names_and_milestones_are_rejected():
    with pytest.raises(ValueError, match="optimizer.name must be one of"):
        build_optimizer(nn.Linear(2, 2), {"name": "lamb", "lr": 0.1})
    with pytest.raises(ValueError, match="schedule.name must be one of"):
        lr_factor(0, {"name": "poly"}, 10)
    with pytest.raises(ValueError, match="increasing"):
        resolve_milestones([0.8, 0.2], 10)


@pytest.mark.parametrize(
    "config",
    [
        {"name": "sgd", "lr": 0.01, "weight_decay": 1e-4},
        {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
    ],
)
def test_optimisers_step_all_tensors_at_once_with_the_per_tensor_values(config):
    """The multi-tensor (foreach) update gives the per-tensor implementation's weights bit for bit on a CPU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 6, 6))
    optimizer = build_optimizer(model, config)
    assert all(group["foreach"] for group in optimizer.param_groups)
    reference_model = copy.deepcopy(model)
    reference = build_optimizer(reference_model, config)
    for group in reference.param_groups:
        group["foreach"] = False  # torch's per-tensor loop
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        for parameter, twin in zip(model.parameters(), reference_model.parameters()):
            parameter.grad = torch.randn(parameter.shape, generator=generator)
            twin.grad = parameter.grad.clone()
        optimizer.step()
        reference.step()
    for parameter, twin in zip(model.parameters(), reference_model.parameters()):
        assert torch.equal(parameter, twin)
