"""A tiny saved person search model and a synthetic gallery, shared by the pipeline, hub and CLI tests.

Imported by path (tests have no packages): ``sys.path.insert(0, <tests/pipelines>)`` then
``import tiny_search_model``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hf_personsearch import PersonSearchConfig, PersonSearchImageProcessor, PersonSearchModel
from hf_personsearch.data.synthetic.render import render_scene

GALLERY_SIZE = (320, 240)
"""Gallery scene width, height: small enough for a fast CPU forward at min_size 128."""


def tiny_config(**overrides) -> PersonSearchConfig:
    """test_resnet backbone (0.1M parameters), small anchors and few proposals: a forward in ~50 ms."""
    values = dict(
        backbone="test_resnet",
        num_person_ids=8,
        oim_queue_size=16,
        anchor_sizes=(16, 32, 64, 128),
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=20,
        box_detections_per_img=20,
        freeze_batchnorm=False,
    )
    values.update(overrides)
    return PersonSearchConfig(**values)


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny model with its processor (min_size 128, max_size 256) to ``folder``."""
    torch.manual_seed(seed)
    model = PersonSearchModel(tiny_config()).eval()
    model.save_pretrained(folder)
    PersonSearchImageProcessor(min_size=128, max_size=256).save_pretrained(folder)
    return folder


def write_gallery(folder: Path, count: int = 3, seed: int = 0) -> list[np.ndarray]:
    """``count`` synthetic scenes with two persons each, saved as PNG; returns their ground-truth boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    all_boxes = []
    for index in range(count):
        image, boxes = render_scene(
            [index % 4, 4 + index % 4], width=GALLERY_SIZE[0], height=GALLERY_SIZE[1], domain=index % 2, rng=rng
        )
        image.save(folder / f"scene_{index:03d}.png")
        all_boxes.append(boxes)
    return all_boxes
