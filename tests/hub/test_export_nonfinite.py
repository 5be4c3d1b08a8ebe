"""load_backbone_weights refuses NaN / infinite weights (a diverged run's checkpoint) and names the keys."""

import pytest
import torch
import torchvision

from hf_personsearch import PersonSearchConfig, PersonSearchModel
from hf_personsearch.hub import load_backbone_weights


def test_nan_and_inf_weights_are_refused_naming_the_keys(tmp_path):
    torch.manual_seed(0)
    model = PersonSearchModel(PersonSearchConfig(backbone="resnet18", num_person_ids=4, oim_queue_size=4))
    before = {key: value.clone() for key, value in model.backbone.body.state_dict().items()}
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["bn1.running_var"][3] = float("inf")
    torch.save(state, tmp_path / "diverged.pth")
    with pytest.raises(
        ValueError, match=r"diverged.pth: NaN or infinite values in 2 tensor\(s\): .*bn1.running_var"
    ) as e:
        load_backbone_weights(model, tmp_path / "diverged.pth")
    assert "layer1.0.conv1.weight" in str(e.value)
    after = model.backbone.body.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # nothing was loaded
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = 0.0
    state["bn1.running_var"][3] = 1.0
    torch.save(state, tmp_path / "finite.pth")
    assert len(load_backbone_weights(model, tmp_path / "finite.pth").loaded_keys) == len(before)
