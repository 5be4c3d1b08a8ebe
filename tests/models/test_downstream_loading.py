"""Downstream loading: a PersonSearchModel from a pre-training checkpoint (full or backbone only, OIM
re-sized), the exported downstream folder through AutoModel, the pre-training round trip, and checkpoints
saved before the search head became one module."""

from __future__ import annotations

import logging
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_pretrain_model import build
from transformers import AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from hf_personsearch.configuration_person_search import PersonSearchConfig
from hf_personsearch.configuration_person_search_pretrain import PersonSearchPretrainConfig
from hf_personsearch.modeling_person_search import PersonSearchModel
from hf_personsearch.modeling_person_search_pretrain import PersonSearchPretrainModel


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared: two threads fighting other jobs run 10x slower
    yield
    torch.set_num_threads(threads)


def _register_auto_classes():
    # the package registers them in hf_personsearch/__init__.py; this keeps the test independent of that
    if "person_search" not in CONFIG_MAPPING:
        AutoConfig.register("person_search", PersonSearchConfig)
        AutoModel.register(PersonSearchConfig, PersonSearchModel)
    if "person_search_pretrain" not in CONFIG_MAPPING:
        AutoConfig.register("person_search_pretrain", PersonSearchPretrainConfig)
        AutoModel.register(PersonSearchPretrainConfig, PersonSearchPretrainModel)


@pytest.fixture(scope="module")
def pretrain_checkpoint(tmp_path_factory):
    """A pre-training checkpoint whose tensors are all non-trivial (OIM tables filled, BN stats moved)."""
    model = build(seed=3, use_inter_task_alignment=True)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) if "running_var" not in name else torch.rand_like(tensor) + 0.5)
    folder = tmp_path_factory.mktemp("pretrain")
    model.save_pretrained(folder)
    return folder, {name: tensor.clone() for name, tensor in model.state_dict().items()}


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_person_search_model_loads_every_shared_tensor_without_warnings(pretrain_checkpoint, caplog):
    folder, saved = pretrain_checkpoint
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            model = PersonSearchModel.from_pretrained(folder, dtype=torch.float32)
    finally:
        hf_logging.disable_propagation()
    assert _warnings(caplog) == []
    assert model.config.model_type == "person_search"
    state = model.state_dict()
    assert set("person_search." + name for name in state) == {n for n in saved if n.startswith("person_search.")}
    for name, tensor in state.items():
        assert torch.equal(tensor, saved["person_search." + name]), name


def test_backbone_only_keeps_backbone_and_reinitialises_heads(pretrain_checkpoint, caplog):
    folder, saved = pretrain_checkpoint
    with caplog.at_level(logging.WARNING):
        model = PersonSearchModel.from_pretrained(folder, dtype=torch.float32, backbone_only=True)
    assert any("backbone_only" in message for message in _warnings(caplog))
    state = model.state_dict()
    for name, tensor in state.items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, saved["person_search." + name]), name
    for name in (
        "search_head.embedding_head.projections.0.weight",
        "rpn.head.conv.0.0.weight",
        "search_head.box_regressor.linear.weight",
    ):
        assert not torch.equal(state[name], saved["person_search." + name]), name
    assert (
        torch.count_nonzero(model.search_head.oim.lut) == 0 and torch.count_nonzero(model.search_head.oim.queue) == 0
    )


def test_oim_table_resized_for_a_target_dataset_with_other_identities(pretrain_checkpoint, caplog):
    folder, saved = pretrain_checkpoint
    with caplog.at_level(logging.WARNING):
        model = PersonSearchModel.from_pretrained(folder, dtype=torch.float32, num_person_ids=5, oim_queue_size=3)
    assert any(
        "OIM table re-sized from 12 identities / queue 6 to 5 identities / queue 3" in m for m in _warnings(caplog)
    )
    assert model.search_head.oim.lut.shape == (5, 16) and torch.count_nonzero(model.search_head.oim.lut) == 0
    assert model.search_head.oim.queue.shape == (3, 16) and model.config.num_person_ids == 5
    # everything else still comes from the checkpoint
    assert torch.equal(
        model.search_head.embedding_head.projections[0].weight,
        saved["person_search.search_head.embedding_head.projections.0.weight"],
    )
    # same size asked: the pre-trained table is kept
    same = PersonSearchModel.from_pretrained(folder, dtype=torch.float32, num_person_ids=12)
    assert torch.equal(same.search_head.oim.lut, saved["person_search.search_head.oim.lut"])


def test_exported_downstream_folder_loads_as_person_search_model_via_automodel(pretrain_checkpoint, tmp_path):
    _register_auto_classes()
    folder, saved = pretrain_checkpoint
    pretrain = AutoModel.from_pretrained(folder, dtype=torch.float32)
    assert isinstance(pretrain, PersonSearchPretrainModel)
    exported = pretrain.export_person_search_model(tmp_path / "prtps")
    assert exported is pretrain.person_search
    downstream = AutoModel.from_pretrained(tmp_path / "prtps", dtype=torch.float32)
    assert type(downstream) is PersonSearchModel
    for name, tensor in downstream.state_dict().items():
        assert torch.equal(tensor, saved["person_search." + name]), name


def test_pretraining_checkpoint_round_trips_exactly(pretrain_checkpoint):
    folder, saved = pretrain_checkpoint
    model = PersonSearchPretrainModel.from_pretrained(folder, dtype=torch.float32)
    assert model.config.use_inter_task_alignment and model.config.adversarial_loss_weight == 0.3
    state = model.state_dict()
    assert set(state) == set(saved)
    for name, tensor in state.items():
        assert torch.equal(tensor, saved[name]), name


def _legacy_layout(folder, destination):
    """A copy of a saved folder in the layout before NormAwareRoIHead: the search head's parts at the top
    level of the person search model (``embedding_head.*``, ``box_regressor.*``, ``oim.lut`` ...)."""
    shutil.copytree(folder, destination)
    weights = load_file(destination / "model.safetensors")
    legacy = {re.sub(r"(^|\.)search_head\.", r"\1", name): tensor for name, tensor in weights.items()}
    assert "person_search.oim.lut" in legacy or "oim.lut" in legacy
    save_file(legacy, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


def test_checkpoints_of_the_legacy_layout_load_every_tensor(pretrain_checkpoint, tmp_path, caplog):
    folder, saved = pretrain_checkpoint
    legacy = _legacy_layout(folder, tmp_path / "legacy_pretrain")
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            pretrain = PersonSearchPretrainModel.from_pretrained(legacy, dtype=torch.float32)
            downstream = PersonSearchModel.from_pretrained(legacy, dtype=torch.float32)
            pretrain.export_person_search_model(tmp_path / "exported")
            exported = PersonSearchModel.from_pretrained(
                _legacy_layout(tmp_path / "exported", tmp_path / "legacy_exported"), dtype=torch.float32
            )
    finally:
        hf_logging.disable_propagation()
    assert _warnings(caplog) == []  # no missing / unexpected keys
    state = pretrain.state_dict()
    assert set(state) == set(saved)
    for name, tensor in state.items():
        assert torch.equal(tensor, saved[name]), name
    for model in (downstream, exported):
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, saved["person_search." + name]), name
