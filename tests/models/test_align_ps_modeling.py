"""AlignPSModel: the output contract of PersonSearchModel, the aggregation's deformable convolutions, clear errors
on bad input, bit-exact save/load (Auto classes and remote code) for AlignPS and ROI-AlignPS."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from tiny_models import scene_batch
from transformers import AutoConfig, AutoModel

from hf_personsearch import AlignPSConfig, AlignPSModel
from hf_personsearch.aligned_feature_aggregation import AlignedFeatureAggregation

ROI_HEAD = dict(roi_output_size=8, box_batch_size_per_image=16, embedding_dim=32)


def tiny_align_ps_config(**overrides) -> AlignPSConfig:
    values = dict(
        backbone="test_resnet",
        freeze_batchnorm=False,
        freeze_stem=False,
        fpn_channels=32,
        head_norm_groups=8,
        head_num_convs=2,
        num_person_ids=3,
        oim_queue_size=8,
        score_thresh=0.0,  # a random model scores ~0.01: keep its detections
    )
    values.update(overrides)
    return AlignPSConfig(**values)


@pytest.fixture(scope="module")
def batch():
    return scene_batch()


@pytest.fixture(scope="module", params=[False, True], ids=["align_ps", "roi_align_ps"])
def trained(request, batch):
    """A tiny model after two training steps (non-zero OIM tables, moved BatchNorm statistics)."""
    torch.manual_seed(0)
    roi = request.param
    model = AlignPSModel(tiny_align_ps_config(use_roi_head=roi, roi_head=ROI_HEAD if roi else None))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    inputs, labels = batch
    for _ in range(2):
        output = model(inputs["pixel_values"], inputs["image_sizes"], labels=labels)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    return model.eval()


def test_training_output_names_every_loss_and_sums_them_with_the_config_weights(trained, batch):
    inputs, labels = batch
    trained.train()
    try:
        output = trained(inputs["pixel_values"], inputs["image_sizes"], labels=labels)
    finally:
        trained.eval()
    names = {"det_classification", "det_box", "det_centerness", "reid_oim", "reid_triplet"}
    if trained.config.use_roi_head:
        names |= {"roi_det_classification", "roi_det_box", "roi_reid_oim"}
    assert set(output.loss_dict) == names
    assert all(torch.isfinite(value) for value in output.loss_dict.values())
    roi_box_weight = trained.roi_head.config.loss_weight_det_box if trained.config.use_roi_head else 0.0
    expected = sum(value for name, value in output.loss_dict.items() if name != "roi_det_box")
    expected = expected + roi_box_weight * output.loss_dict.get("roi_det_box", 0.0)
    torch.testing.assert_close(output.loss, expected)


def test_inference_follows_the_person_search_output_contract(trained, batch):
    inputs, labels = batch
    with torch.no_grad():
        output = trained(inputs["pixel_values"], inputs["image_sizes"])
    assert output.loss is None and len(output.boxes) == len(output.scores) == len(output.embeddings) == 3
    for boxes, scores, embeddings, (height, width) in zip(
        output.boxes, output.scores, output.embeddings, inputs["image_sizes"].tolist()
    ):
        assert boxes.shape[0] > 0 and embeddings.shape == (boxes.shape[0], trained.config.embedding_dim)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert boxes[:, 0::2].max() <= width and boxes[:, 1::2].max() <= height and boxes.min() >= 0
        assert (scores[:-1] >= scores[1:]).all()  # NMS keeps them sorted
        torch.testing.assert_close(embeddings.norm(dim=1), scores)  # norm-aware: norm = detection score
    queries = trained.embed_boxes(inputs["pixel_values"], [t["boxes"] for t in labels], inputs["image_sizes"])
    assert [q.shape[0] for q in queries] == [len(t["boxes"]) for t in labels]
    torch.testing.assert_close(torch.cat(queries).norm(dim=1), torch.ones(6))


def test_aggregation_starts_as_plain_convolutions_and_keeps_stride_8():
    torch.manual_seed(0)
    afa = AlignedFeatureAggregation([4, 6, 8], 5, deformable=True)
    levels = [torch.randn(1, 4, 8, 12), torch.randn(1, 6, 4, 6), torch.randn(1, 8, 2, 3)]
    output = afa(levels)

    def conv(module, x):  # zero offsets: a deformable convolution samples the plain 3x3 grid
        return F.conv2d(x, module.weight, module.bias, padding=1)

    coarse = conv(afa.laterals[2], levels[2])
    middle = torch.cat([conv(afa.laterals[1], levels[1]), F.interpolate(coarse, size=(4, 6), mode="nearest")], 1)
    fine = torch.cat([conv(afa.laterals[0], levels[0]), F.interpolate(middle, size=(8, 12), mode="nearest")], 1)
    torch.testing.assert_close(output, conv(afa.output, fine), atol=1e-5, rtol=1e-5)
    assert output.shape == (1, 5, 8, 12)


def test_deformable_offsets_change_where_the_feature_is_sampled():
    torch.manual_seed(0)
    afa = AlignedFeatureAggregation([4, 6, 8], 5, deformable=True)
    levels = [torch.randn(1, 4, 8, 12), torch.randn(1, 6, 4, 6), torch.randn(1, 8, 2, 3)]
    before = afa(levels)
    with torch.no_grad():
        afa.output.offset.bias.fill_(1.0)  # every tap one pixel down-right
    assert not torch.allclose(before, afa(levels))


def test_deformable_convolution_runs_under_bf16_autocast_and_in_a_bf16_model():
    """torchvision's CPU deform_conv2d has no bf16 kernel: under autocast (the benchmark's default on a CPU with
    bf16 instructions) and in a model cast to bf16 it must still run, close to float32, with gradients."""
    torch.manual_seed(0)
    afa = AlignedFeatureAggregation([4, 6, 8], 5, deformable=True)
    with torch.no_grad():
        afa.output.offset.bias.fill_(0.3)  # off the grid: the bilinear sampling is exercised
    levels = [torch.randn(2, 4, 8, 12), torch.randn(2, 6, 4, 6), torch.randn(2, 8, 2, 3)]
    reference = afa(levels)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the backbone's maps arrive in bf16 under autocast
        mixed = afa([level.bfloat16() for level in levels])
    assert mixed.dtype == torch.bfloat16  # the input's dtype, as torchvision's CUDA autocast rule returns it
    torch.testing.assert_close(mixed.float(), reference, atol=0.1, rtol=0.05)
    mixed.float().sum().backward()
    assert afa.output.weight.grad is not None and torch.isfinite(afa.output.weight.grad).all()
    assert afa.output.offset.weight.grad.abs().sum() > 0
    bf16 = afa.to(torch.bfloat16)([level.bfloat16() for level in levels])
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), reference, atol=0.15, rtol=0.05)


def test_bad_input_is_named(batch):
    torch.manual_seed(0)
    model = AlignPSModel(tiny_align_ps_config()).train()
    inputs, labels = batch
    with pytest.raises(ValueError, match="training needs labels"):
        model(inputs["pixel_values"], inputs["image_sizes"])
    bad = [dict(t) for t in labels]
    bad[1] = {"boxes": torch.tensor([[10.0, 10.0, 10.0, 40.0]]), "person_ids": torch.tensor([0])}
    with pytest.raises(ValueError, match=r"labels\[1\]: box .* has no area"):
        model(inputs["pixel_values"], inputs["image_sizes"], labels=bad)
    bad[1] = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 40.0]]), "person_ids": torch.tensor([7])}
    with pytest.raises(ValueError, match=r"labels\[1\]: person ids \[7\] are outside the OIM table \[0, 3\)"):
        model(inputs["pixel_values"], inputs["image_sizes"], labels=bad)
    with pytest.raises(ValueError, match=r"pixel_values must be a float tensor \(batch, 3, height, width\)"):
        model(inputs["pixel_values"][:, :2])
    with pytest.raises(ValueError, match="embed_boxes: image 0 box .* is empty"):
        model.embed_boxes(inputs["pixel_values"][:1], [torch.tensor([[5.0, 5.0, 5.0, 9.0]])])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(fpn_channels=30, head_norm_groups=8), r"fpn_channels \(30\) must be a multiple of head_norm_groups"),
        (dict(backbone_library="torchvision"), "backbone_library must be 'timm'"),
        (dict(nms_thresh=0.0), r"nms_thresh must be in \(0, 1\]"),
        (dict(roi_head={"box_nms_thresh": 2.0}), "roi_head: .*NMS thresholds"),
    ],
)
def test_config_rejects_impossible_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_align_ps_config(**overrides)


def test_save_and_load_are_bit_exact_through_the_auto_classes(trained, batch, tmp_path):
    inputs, labels = batch
    trained.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), AlignPSConfig)
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(loaded) is AlignPSModel and loaded.config.use_roi_head == trained.config.use_roi_head
    expected = trained.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert trained.search_head.oim.lut.abs().sum() > 0  # the tables travel with the weights
    with torch.no_grad():
        before = trained(inputs["pixel_values"], inputs["image_sizes"])
        after = loaded(inputs["pixel_values"], inputs["image_sizes"])
    for name in ("boxes", "scores", "embeddings"):
        for a, b in zip(getattr(before, name), getattr(after, name)):
            assert torch.equal(a, b), name
    boxes = [t["boxes"] for t in labels]
    for a, b in zip(
        trained.embed_boxes(inputs["pixel_values"], boxes), loaded.embed_boxes(inputs["pixel_values"], boxes)
    ):
        assert torch.equal(a, b)


def test_resize_oim_gives_fresh_tables_of_the_target_size(batch):
    model = AlignPSModel(tiny_align_ps_config(use_roi_head=True, roi_head=ROI_HEAD))
    model.resize_oim(5, 4)
    assert model.search_head.oim.lut.shape == (5, 32) and model.search_head.oim.queue.shape == (4, 32)
    assert model.roi_head.oim.lut.shape == (5, 32) and model.config.num_person_ids == 5


@pytest.mark.slow
def test_remote_code_loads_where_the_package_is_not_importable(tmp_path):
    AlignPSModel(tiny_align_ps_config()).save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "modeling_align_ps.py").exists()
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
        assert type(model).__name__ == "AlignPSModel", type(model)
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        print("remote-ok")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-ok" in result.stdout


def test_roi_head_takes_the_linear_detection_score(batch):
    torch.manual_seed(0)
    roi_head = {**ROI_HEAD, "detection_score": "linear"}
    model = AlignPSModel(tiny_align_ps_config(use_roi_head=True, roi_head=roi_head)).train()
    inputs, labels = batch
    output = model(inputs["pixel_values"], inputs["image_sizes"], labels=labels)
    output.loss.backward()
    classifier = model.roi_head.person_classifier
    assert classifier is not None and classifier.linear.weight.grad.abs().sum() > 0
    assert model.roi_head.embedding_head.rescaler is None


def test_a_batch_without_persons_trains_on_background_only(batch):
    torch.manual_seed(0)
    model = AlignPSModel(tiny_align_ps_config()).train()
    inputs, _ = batch
    empty = [{"boxes": torch.zeros(0, 4), "person_ids": torch.zeros(0, dtype=torch.long)} for _ in range(3)]
    output = model(inputs["pixel_values"], inputs["image_sizes"], labels=empty)
    assert output.loss_dict["det_classification"] > 0
    assert all(output.loss_dict[name] == 0 for name in ("det_box", "det_centerness", "reid_oim", "reid_triplet"))
    output.loss.backward()
    assert model.search_head.classification.cls_logits.weight.grad.abs().sum() > 0
