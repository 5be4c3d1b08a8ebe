"""AlignPS and ROI-AlignPS learn: a tiny model overfits three generated scenes (three identities, two background
domains) until it detects every person and its query embeddings rank the same person first in the other scenes.
A wrong target assignment, a detached re-ID feature or a broken table update would not get there."""

import pytest
import torch
from tiny_models import scene_batch
from torchvision.ops import box_iou

from hf_personsearch import AlignPSConfig, AlignPSModel

SCENES = ((0, 1), (1, 2), (2, 0))


def tiny_align_ps_config(**overrides) -> AlignPSConfig:
    values = dict(
        backbone="test_resnet",
        freeze_batchnorm=False,  # random init: batch statistics are needed to train at all
        freeze_stem=False,
        fpn_channels=32,
        head_norm_groups=8,
        head_num_convs=2,
        num_person_ids=3,
        oim_queue_size=8,
    )
    values.update(overrides)
    return AlignPSConfig(**values)


def overfit(model: AlignPSModel, steps: int):
    torch.manual_seed(0)
    batch, labels = scene_batch(SCENES)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[int(0.75 * steps)], gamma=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        output = model(batch["pixel_values"], batch["image_sizes"], labels=labels)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(output.loss.item())
    return batch, labels, losses


def check_detects_and_retrieves(model, batch, labels, losses):
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses
    model.eval()
    with torch.no_grad():
        detections = model(batch["pixel_values"], batch["image_sizes"])
    for index, target in enumerate(labels):
        confident = detections.boxes[index][detections.scores[index] >= 0.5]
        assert len(confident) > 0, f"scene {index}: no confident detection ({detections.scores[index].tolist()})"
        best_iou = box_iou(target["boxes"], confident).max(dim=1).values
        assert (best_iou > 0.5).all(), f"scene {index}: best IoU per person {best_iou.tolist()}"
    queries = model.embed_boxes(batch["pixel_values"], [t["boxes"] for t in labels], batch["image_sizes"])
    for query_scene, identities in enumerate(SCENES):
        for person, identity in enumerate(identities):
            for gallery_scene, gallery_identities in enumerate(SCENES):
                if gallery_scene == query_scene or identity not in gallery_identities:
                    continue
                similarities = queries[gallery_scene] @ queries[query_scene][person]
                ranked_first = gallery_identities[int(similarities.argmax())]
                assert ranked_first == identity, (query_scene, identity, gallery_scene, similarities.tolist())


@pytest.mark.slow
def test_align_ps_overfits_generated_scenes_detects_every_person_and_retrieves_identities():
    torch.manual_seed(0)
    model = AlignPSModel(tiny_align_ps_config())
    check_detects_and_retrieves(model, *overfit(model, 200))


@pytest.mark.slow
def test_roi_align_ps_overfits_generated_scenes_detects_every_person_and_retrieves_identities():
    torch.manual_seed(0)
    roi_head = dict(roi_output_size=8, box_batch_size_per_image=16, embedding_dim=32)
    model = AlignPSModel(tiny_align_ps_config(use_roi_head=True, roi_head=roi_head))
    check_detects_and_retrieves(model, *overfit(model, 200))
