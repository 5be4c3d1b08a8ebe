"""NormAwareRoIHead: the same numbers as the model before the head became one module, its contract in
train and eval mode, and batch-independent features of given boxes."""

from __future__ import annotations

import pytest
import torch
from tiny_models import scene_batch, tiny_config

from hf_personsearch import PersonSearchModel
from hf_personsearch.norm_aware_roi_head import NormAwareRoIHead

# Produced by the pre-refactor PersonSearchModel (embedding_head / box_regressor / oim / roi_align as model
# attributes, commit d920e79 of main) with this file's seeds and inputs: torch.manual_seed(0), the model,
# torch.manual_seed(1), one training forward; then eval(). The refactored model reproduced them bit for bit
# on the machine that produced them; the tolerance only absorbs BLAS differences between machines.
REFERENCE_LOSSES = {
    "rpn_objectness": 0.6941362023353577,
    "rpn_box": 0.023084798827767372,
    "det_classification": 0.7363207936286926,
    "det_box": 0.3869781196117401,
    "reid_oim": 2.397895574569702,
}
REFERENCE_LOSS = 7.721219062805176
# per image: (detections, sum of boxes, sum of scores, sum of embeddings), then the first two boxes/scores
REFERENCE_DETECTIONS = [
    (34, 8567.538790225983, 9.885472893714905, 4.484146508649246),
    (47, 13895.169865608215, 13.798823565244675, -2.10800935984528),
    (37, 10264.661141395569, 11.032666832208633, -5.748128304432834),
]
REFERENCE_FIRST_BOXES = [
    [[0.03610038757324219, 48.14639663696289, 32.11420440673828, 80.26667785644531], [16.05928611755371, 48.04311752319336, 48.125648498535156, 80.19686889648438]],
    [[79.96439361572266, 48.23125457763672, 111.9171371459961, 79.97870635986328], [80.06437683105469, 32.29654312133789, 111.91432189941406, 64.065185546875]],
    [[64.05174255371094, 15.97978401184082, 96.1905517578125, 48.36811065673828], [48.10154724121094, 16.067073822021484, 80.11140441894531, 48.04352951049805]],
]  # fmt: skip
REFERENCE_FIRST_SCORES = [
    [0.2983378469944, 0.2978711724281311],
    [0.29777297377586365, 0.2975512146949768],
    [0.30914202332496643, 0.3084709346294403],
]


@pytest.fixture(scope="module")
def batch():
    return scene_batch()


def test_losses_and_detections_equal_the_pre_refactor_model(batch):
    pixel_batch, labels = batch
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_config()).train()
    torch.manual_seed(1)
    output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"], labels=labels)
    for name, value in REFERENCE_LOSSES.items():
        assert output.loss_dict[name].item() == pytest.approx(value, rel=1e-6, abs=1e-7), name
    assert output.loss.item() == pytest.approx(REFERENCE_LOSS, rel=1e-6)
    model.eval()
    with torch.no_grad():
        output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"])
    for image, (count, boxes, scores, embeddings) in enumerate(REFERENCE_DETECTIONS):
        assert len(output.boxes[image]) == count
        assert output.boxes[image].double().sum().item() == pytest.approx(boxes, rel=1e-6)
        assert output.scores[image].double().sum().item() == pytest.approx(scores, rel=1e-6)
        assert output.embeddings[image].double().sum().item() == pytest.approx(embeddings, rel=1e-5, abs=1e-5)
        torch.testing.assert_close(output.boxes[image][:2], torch.tensor(REFERENCE_FIRST_BOXES[image]))
        torch.testing.assert_close(output.scores[image][:2], torch.tensor(REFERENCE_FIRST_SCORES[image]))


def _head_inputs(model, pixel_batch):
    sizes = [tuple(size) for size in pixel_batch["image_sizes"].tolist()]
    return model.encode(pixel_batch["pixel_values"]), sizes


def test_head_contract_losses_in_train_mode_detections_in_eval_mode(batch):
    pixel_batch, labels = batch
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_config())
    head = model.search_head
    assert isinstance(head, NormAwareRoIHead)
    encoder_features, sizes = _head_inputs(model, pixel_batch)
    proposals = [target["boxes"] for target in labels]  # the ground truth is a valid set of proposals
    head.train()
    with pytest.raises(ValueError, match="needs targets"):
        head(encoder_features, proposals, sizes)
    output = head(encoder_features, proposals, sizes, labels)
    assert set(output.losses) == {"det_classification", "det_box", "reid_oim"} and output.detections is None
    # every sampled RoI is one of the given boxes (proposals + ground truth): all persons, 2 per image x 2
    assert output.roi_image_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert output.instance_features.shape == (12, model.backbone.head_channels)
    head.eval()
    with torch.no_grad():
        output = head(encoder_features, proposals, sizes)
    assert output.losses is None and len(output.detections) == 3
    assert output.roi_image_index.tolist() == [0, 0, 1, 1, 2, 2]


def _embedding_statistics(head):
    return [
        tensor.clone()
        for module in head.embedding_head.modules()
        if isinstance(module, torch.nn.BatchNorm1d)
        for tensor in (module.running_mean, module.running_var, module.num_batches_tracked)
    ]


def test_box_features_do_not_depend_on_the_other_boxes_and_leave_the_statistics_alone(batch):
    pixel_batch, labels = batch
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_config(freeze_batchnorm=True)).train()  # the box head's BN frozen (default)
    head = model.search_head
    encoder_features, sizes = _head_inputs(model, pixel_batch)
    # move the running statistics away from their initial (0, 1), as training does
    head(encoder_features, [target["boxes"] for target in labels], sizes, labels)
    statistics = _embedding_statistics(head)
    alone = head.box_features(
        encoder_features, [labels[0]["boxes"][:1], torch.zeros((0, 4)), torch.zeros((0, 4))], sizes
    )
    crowded = head.box_features(encoder_features, [target["boxes"] for target in labels], sizes)
    assert head.training
    for before, after in zip(statistics, _embedding_statistics(head)):
        assert torch.equal(before, after)
    torch.testing.assert_close(crowded.reid_embeddings[:1], alone.reid_embeddings, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(crowded.embeddings[:1], alone.embeddings, rtol=1e-5, atol=1e-6)
    # two boxes in train-mode BatchNorm would give +-1 in every channel; the running statistics do not
    assert not torch.allclose(crowded.reid_embeddings[:2].abs(), torch.ones(2, model.config.embedding_dim))
    # gradients reach the embedding head and the encoder features
    crowded.reid_embeddings.sum().backward()
    assert head.embedding_head.projections[1].weight.grad.abs().sum() > 0
    # the query path (eval mode) computes the same features
    query = model.embed_boxes(pixel_batch["pixel_values"], [t["boxes"] for t in labels], pixel_batch["image_sizes"])
    torch.testing.assert_close(torch.cat(query), crowded.embeddings.detach(), rtol=1e-5, atol=1e-6)
