"""Tiny model settings shared by the model tests: test_resnet (0.1M-parameter timm model, random init)
and small RPN/RoI budgets so one training step on three 160x128 images takes ~0.2 s on one core."""

from __future__ import annotations

import numpy as np
import torch

from hf_personsearch import PersonSearchConfig, PersonSearchImageProcessor
from hf_personsearch.data.synthetic.render import render_scene

TINY = dict(
    backbone="test_resnet",
    freeze_batchnorm=False,  # random init: batch statistics are needed to train at all
    freeze_stem=False,
    anchor_sizes=(32, 64, 128),
    rpn_batch_size_per_image=64,
    rpn_pre_nms_top_n_train=300,
    rpn_post_nms_top_n_train=64,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=16,
    roi_output_size=8,
    num_person_ids=3,
    oim_queue_size=8,
)


def tiny_config(**overrides) -> PersonSearchConfig:
    return PersonSearchConfig(**{**TINY, **overrides})


def scene_batch(scenes=((0, 1), (1, 2), (2, 0)), width=160, height=128, seed=0):
    """Generated scenes (one per tuple of identities, alternating domains) as a model batch + labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index, identities in enumerate(scenes):
        image, boxes = render_scene(
            list(identities),
            width=width,
            height=height,
            domain=index % 2,
            rng=rng,
            min_person_height=56,
            max_person_height=100,
        )
        images.append(image)
        labels.append({"boxes": torch.tensor(boxes), "person_ids": torch.tensor(identities)})
    batch = PersonSearchImageProcessor(min_size=height, max_size=width)(images)
    return batch, labels


def tiny_person_search_config(**overrides) -> PersonSearchConfig:
    """A test_resnet person search model with few anchors/RoIs, so one step takes well under a second."""
    values = dict(
        backbone="test_resnet",
        freeze_stem=False,
        freeze_batchnorm=False,
        anchor_sizes=(16, 32),
        anchor_aspect_ratios=(0.5, 1.0),
        rpn_batch_size_per_image=16,
        rpn_pre_nms_top_n_train=60,
        rpn_post_nms_top_n_train=8,
        rpn_pre_nms_top_n_test=60,
        rpn_post_nms_top_n_test=8,
        box_batch_size_per_image=4,
        roi_output_size=4,
        embedding_dim=16,
        num_person_ids=12,
        oim_queue_size=6,
    )
    values.update(overrides)
    return PersonSearchConfig(**values)
