import pytest

from hf_personsearch import PersonSearchConfig


def test_defaults_are_nae_values():
    config = PersonSearchConfig()
    assert config.backbone == "resnet50" and config.box_head_stages == 1
    assert config.roi_output_size == 14 and config.embedding_dim == 256
    assert config.box_nms_thresh == 0.4 and config.box_detections_per_img == 300
    assert config.oim_scalar == 30.0 and config.oim_momentum == 0.5
    assert config.loss_weight_det_box == 10.0
    assert config.no_identity_id == -1


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
        ({"no_identity_id": 3, "num_person_ids": 10}, "no_identity_id"),
        ({"backbone_library": "mmdet"}, "backbone_library"),
        ({"box_positive_fraction": 0.0}, "box_positive_fraction"),
        ({"oim_momentum": 1.0}, "oim_momentum"),
        ({"bbox_reg_weights": (1.0, 1.0)}, "bbox_reg_weights"),
    ],
)
def test_contradictory_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        PersonSearchConfig(**overrides)
