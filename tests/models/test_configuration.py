import json
import logging

import pytest

from hf_personsearch import PersonSearchConfig


def test_defaults_are_nae_values():
    config = PersonSearchConfig()
    assert config.backbone == "resnet50" and config.box_head_stages == 1
    assert config.roi_output_size == 14 and config.embedding_dim == 256
    assert config.box_nms_thresh == 0.4 and config.box_detections_per_img == 300
    assert config.oim_scalar == 30.0 and config.oim_momentum == 0.5
    assert config.loss_weight_det_box == 10.0


def test_backbone_weights_are_not_config(caplog):
    # an old config.json naming a file of another machine: the key is dropped with a warning, never read
    with caplog.at_level("WARNING"):
        config = PersonSearchConfig.from_dict({"backbone": "resnet18", "backbone_weights_path": "/elsewhere/r18.pth"})
    assert "ignoring backbone_weights_path='/elsewhere/r18.pth'" in caplog.text
    assert "backbone_weights_path" not in config.to_dict()
    assert PersonSearchConfig().backbone_init is None  # provenance only, written by load_backbone_weights
    assert (
        PersonSearchConfig(backbone_library="builtin", backbone="shufflenet_v1_g3_x1_0").backbone_library == "builtin"
    )


def test_round_trip_through_dict():
    config = PersonSearchConfig(backbone="resnet18", num_person_ids=482, oim_queue_size=500)
    again = PersonSearchConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"rpn_fg_iou_thresh": 0.3, "rpn_bg_iou_thresh": 0.7}, "rpn_bg_iou_thresh"),
        ({"rpn_post_nms_top_n_test": 7000}, "rpn_post_nms_top_n_test"),
        ({"embedding_dim": 255}, "embedding_dim"),
        ({"backbone_library": "mmdet"}, "backbone_library"),
        ({"box_positive_fraction": 0.0}, "box_positive_fraction"),
        ({"oim_momentum": 1.0}, "oim_momentum"),
        ({"bbox_reg_weights": (1.0, 1.0)}, "bbox_reg_weights"),
    ],
)
def test_contradictory_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        PersonSearchConfig(**overrides)


def test_old_config_json_with_processor_and_identity_fields_still_loads(tmp_path, caplog):
    # config.json files written before carry image_mean/image_std (now the image processor's) and
    # no_identity_id (now oim.NO_IDENTITY): they load, and the keys are dropped.
    saved = PersonSearchConfig(num_person_ids=482).to_dict()
    saved.update(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], no_identity_id=-1)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING):
        loaded = PersonSearchConfig.from_pretrained(tmp_path)
    assert loaded.num_person_ids == 482 and not caplog.records
    for key in ("image_mean", "image_std", "no_identity_id"):
        assert not hasattr(loaded, key) and key not in loaded.to_dict()
    saved["no_identity_id"] = 5555  # a value the data never used: dropped, but said
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING):
        assert not hasattr(PersonSearchConfig.from_pretrained(tmp_path), "no_identity_id")
    assert "no_identity_id=5555" in caplog.text
