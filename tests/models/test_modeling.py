"""PersonSearchModel: outputs, bad input, save/load, Auto classes, remote code and hub-cache loading."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from tiny_models import scene_batch, tiny_config
from torchvision.ops import FrozenBatchNorm2d
from transformers import AutoConfig, AutoModel

from hf_personsearch import PersonSearchConfig, PersonSearchModel
from hf_personsearch.hub import load_backbone_weights
from hf_personsearch.region_proposal import in_ignore_regions


@pytest.fixture(scope="module")
def batch():
    return scene_batch()


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return PersonSearchModel(tiny_config())


def train_step(model, batch, labels):
    model.train()
    output = model(batch["pixel_values"], batch["image_sizes"], labels=labels)
    output.loss.backward()
    return output


def test_training_output_names_every_loss_term_and_sums_them_with_the_config_weights(model, batch):
    pixel_batch, labels = batch
    output = train_step(model, pixel_batch, labels)
    assert set(output.loss_dict) == {"rpn_objectness", "rpn_box", "det_classification", "det_box", "reid_oim"}
    config = model.config
    expected = (
        output.loss_dict["rpn_objectness"] * config.loss_weight_rpn_objectness
        + output.loss_dict["rpn_box"] * config.loss_weight_rpn_box
        + output.loss_dict["det_classification"] * config.loss_weight_det_classification
        + output.loss_dict["det_box"] * config.loss_weight_det_box
        + output.loss_dict["reid_oim"] * config.loss_weight_reid
    )
    assert torch.allclose(output.loss, expected)
    assert model.search_head.embedding_head.projections[0].weight.grad is not None
    # the box head (layer4) trains through the RoIs; its residual branches start at zero (timm zero_init_last)
    assert model.backbone.body.layer4[0].downsample[1].weight.grad.abs().sum() > 0
    assert model.rpn.head.conv[0][0].weight.grad.abs().sum() > 0


def test_inference_returns_boxes_scores_and_confidence_weighted_embeddings(model, batch):
    pixel_batch, _ = batch
    model.eval()
    with torch.no_grad():
        output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"])
    assert len(output.boxes) == 3
    for boxes, scores, embeddings, (height, width) in zip(
        output.boxes, output.scores, output.embeddings, pixel_batch["image_sizes"].tolist()
    ):
        assert boxes.shape[0] == scores.shape[0] == embeddings.shape[0] <= model.config.box_detections_per_img
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all() and (boxes >= 0).all()
        # CWS: unit embedding times the detection score
        assert torch.allclose(embeddings.norm(dim=1), scores, atol=1e-5)


def test_query_path_gives_unit_embeddings_independent_of_the_batch_mode(model, batch):
    pixel_batch, labels = batch
    model.train()
    embeddings = model.embed_boxes(
        pixel_batch["pixel_values"], [t["boxes"] for t in labels], pixel_batch["image_sizes"]
    )
    assert model.training  # mode restored
    assert [e.shape for e in embeddings] == [(2, 256)] * 3
    assert torch.allclose(embeddings[0].norm(dim=1), torch.ones(2), atol=1e-5)


def test_image_without_persons_is_a_valid_negative_sample(model, batch):
    pixel_batch, labels = batch
    labels = [labels[0], {"boxes": torch.zeros((0, 4)), "person_ids": torch.zeros(0, dtype=torch.long)}, labels[2]]
    output = train_step(model, pixel_batch, labels)
    assert torch.isfinite(output.loss)


def test_box_outside_the_image_is_clipped(model, batch):
    pixel_batch, labels = batch
    labels = [dict(t) for t in labels]
    labels[0] = {
        "boxes": torch.tensor([[-20.0, -5.0, 50.0, 90.0], [100.0, 10.0, 400.0, 300.0]]),
        "person_ids": torch.tensor([0, 1]),
    }
    assert torch.isfinite(train_step(model, pixel_batch, labels).loss)


def test_ignore_regions_keep_anchors_and_proposals_inside_them_out_of_the_negatives(model, batch, monkeypatch):
    """A region over the whole of image 0: none of its anchors mostly inside is a negative of the RPN, and
    every RoI sampled there matches a person (no negative left to draw). Images 1-2 have no region key."""
    pixel_batch, labels = batch
    height, width = pixel_batch["image_sizes"][0].tolist()
    region = torch.tensor([[0.0, 0.0, width, height]])
    labels = [{**labels[0], "ignore_regions": region}, labels[1], labels[2]]
    assigned = []
    assign = model.rpn.assign_targets_to_anchors

    def spy(anchors, targets):
        result = assign(anchors, targets)
        assigned.append((anchors, result[0]))
        return result

    monkeypatch.setattr(model.rpn, "assign_targets_to_anchors", spy)
    model.train()
    output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"], labels=labels, output_features=True)
    assert torch.isfinite(output.loss)
    ((anchors, anchor_labels),) = assigned
    covered = in_ignore_regions(anchors[0], region)
    assert covered.sum() > 0 and not (anchor_labels[0][covered] == 0).any()
    assert (anchor_labels[1] == 0).any()  # image 1 keeps its negatives
    # Image 1 fills its RoI budget with negatives; image 0 has only its positives, at most their share.
    config = model.config
    per_image = torch.bincount(output.roi_image_index, minlength=3).tolist()
    assert per_image[1] == config.box_batch_size_per_image
    assert 0 < per_image[0] <= int(config.box_batch_size_per_image * config.box_positive_fraction)
    with pytest.raises(ValueError, match=r"labels\[0\]: ignore_regions must be a \(k, 4\)"):
        model(
            pixel_batch["pixel_values"],
            pixel_batch["image_sizes"],
            labels=[{**labels[0], "ignore_regions": [1.0]}] + labels[1:],
        )


@pytest.mark.parametrize(
    "box, person_id, message",
    [
        ([10.0, 10.0, 10.0, 50.0], 0, r"labels\[1\]: box .* has no area"),
        ([float("nan"), 10.0, 20.0, 50.0], 0, r"labels\[1\]: box .* not finite"),
        ([200.0, 10.0, 220.0, 50.0], 0, r"labels\[1\]: box .* has no area inside the 160x128 image"),
        ([10.0, 10.0, 40.0, 50.0], 3, r"labels\[1\]: person ids \[3\] are outside the OIM table"),
    ],
)
def test_bad_labels_raise_naming_the_image(model, batch, box, person_id, message):
    pixel_batch, labels = batch
    labels = [labels[0], {"boxes": torch.tensor([box]), "person_ids": torch.tensor([person_id])}, labels[2]]
    model.train()
    with pytest.raises(ValueError, match=message):
        model(pixel_batch["pixel_values"], pixel_batch["image_sizes"], labels=labels)


def test_misspelt_argument_is_rejected_by_name(model, batch):
    pixel_batch, _ = batch
    with pytest.raises(TypeError, match="image_size"):
        model(pixel_batch["pixel_values"], image_size=pixel_batch["image_sizes"])


def test_bad_pixel_values_raise(model):
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="floating point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    model.train()
    with pytest.raises(ValueError, match="training needs labels"):
        model(torch.zeros(1, 3, 64, 64))


def test_frozen_stem_and_batchnorm_do_not_move():
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_config(freeze_stem=True, freeze_batchnorm=True))
    pixel_batch, labels = scene_batch()
    stem = next(model.backbone.body.conv1.parameters()).clone()  # test_resnet has a deep (Sequential) stem
    running_mean = model.backbone.body.layer2[0].bn1.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_step(model, pixel_batch, labels)
    optimizer.step()
    assert torch.equal(next(model.backbone.body.conv1.parameters()), stem)
    assert torch.equal(model.backbone.body.layer2[0].bn1.running_mean, running_mean)
    assert isinstance(model.backbone.body.layer2[0].bn1, FrozenBatchNorm2d)


def test_init_weights_keeps_loaded_backbone_weights_through_save_and_load(tmp_path):
    torch.manual_seed(123)
    reference = timm.create_model("test_resnet", features_only=True)
    weights = tmp_path / "test_resnet.pth"
    torch.save(reference.state_dict(), weights)
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_config())
    load_backbone_weights(model, weights)
    model.save_pretrained(tmp_path / "saved")
    loaded = PersonSearchModel.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.backbone.body.state_dict()[key], value), key


def outputs_of(model, pixel_batch):
    model.eval()
    with torch.no_grad():
        return model(pixel_batch["pixel_values"], pixel_batch["image_sizes"])


def test_save_and_load_are_bit_exact_including_the_oim_table(model, batch, tmp_path):
    pixel_batch, labels = batch
    train_step(model, pixel_batch, labels)  # fills the LUT and the queue
    assert model.search_head.oim.lut.abs().sum() > 0
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = PersonSearchModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    before, after = outputs_of(model, pixel_batch), outputs_of(loaded, pixel_batch)
    for name in ("boxes", "scores", "embeddings"):
        for a, b in zip(getattr(before, name), getattr(after, name)):
            assert torch.equal(a, b)
    auto = AutoModel.from_pretrained(tmp_path)
    assert type(auto) is PersonSearchModel
    assert isinstance(AutoConfig.from_pretrained(tmp_path), PersonSearchConfig)


@pytest.mark.slow
def test_remote_code_loads_where_the_package_is_not_importable(model, tmp_path):
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "modeling_person_search.py").exists()
    script = textwrap.dedent(
        f"""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path[:] = [p for p in sys.path if p not in ("", {os.getcwd()!r})]
        try:
            import hf_personsearch
        except ImportError:
            pass
        else:
            raise SystemExit("hf_personsearch is importable: the test would prove nothing")
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
        assert type(model).__name__ == "PersonSearchModel", type(model)
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        print("remote-ok")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-ok" in result.stdout


def test_loading_by_hub_id_from_an_offline_cache(model, tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--org--prtps-tiny"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(saved, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = AutoModel.from_pretrained("org/prtps-tiny", cache_dir=tmp_path / "cache")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_bf16_autocast_step_keeps_fp32_tables(model, batch):
    pixel_batch, labels = batch
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"], labels=labels)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert model.search_head.oim.lut.dtype == torch.float32 and model.search_head.oim.lut.abs().sum() > 0
