"""The synthetic data set of the pre-training benchmark: writer sizes per dataset, and one call to write it all.

The sizes follow the benchmark's data table: enough distinct scenes and persons that a few hundred CPU
steps rarely repeat an image, small enough to write in well under a minute on one core.

========== ================================================================ ======================
dataset    content                                                          style (render.STYLES)
========== ================================================================ ======================
CrowdHuman 84 scenes 192x128 (80 train), 2-4 persons of 30-80 px, a far-away   street
           crowd under a "mask" and an unclear person (ignore regions)
ECP        84 scenes (80 train: 40 day + 40 night), the same layout, a      cool (day), night
           far-away group per image
MSMT17     40 train ids x 4 cameras (+1 val crop each), 4 test ids, cut from  warm
           scenes with a background margin
CUHK03     40 ids, half of them train, x 4 crops (2 per view), half the       street, half resolution
           pixel size of MSMT17's
LUPerson   160 unlabeled crops                                              cool
PRW        40 train ids in 60 frames; 80 test ids, each in 3 of 120 frames     street / dusk (unseen)
           (2 gallery matches per query)
========== ================================================================ ======================

Every dataset draws its persons from its own block of appearances (render.APPEARANCE_BLOCKS), so no
clothing is shared between them and the PRW identities are never seen in pre-training.
"""

from __future__ import annotations

from pathlib import Path

from . import generate

BENCHMARK_SIZES = {
    "crowdhuman": {
        "num_train": 80,
        "num_val": 4,
        "min_persons": 2,
        "max_persons": 4,
        "min_person_height": 30,
        "max_person_height": 80,
        "width": 192,
        "height": 128,
    },
    "ecp": {
        "num_per_subset": 40,
        "num_val_per_subset": 2,
        "min_person_height": 30,
        "max_person_height": 80,
        "width": 192,
        "height": 128,
    },
    "msmt17": {"num_train_ids": 40, "num_test_ids": 4, "num_cameras": 4},
    "cuhk03": {"ids_per_pair": 8, "images_per_view": 2},
    "luperson": {"num_crops": 160},
    "prw": {
        "num_train_frames": 60,
        "num_test_frames": 120,
        "num_train_identities": 40,
        "num_test_identities": 80,
        "frames_per_identity": 3,
    },
}
"""Writer size arguments per dataset (see each writer's ``write``): the five pre-training sub-task
datasets and the PRW target. PRW keeps its default 240x135 frames (16:9, as the real PRW)."""


def write_benchmark(out_dir: str | Path, seed: int = 0) -> dict[str, dict]:
    """Write every dataset of :data:`BENCHMARK_SIZES` under ``out_dir/<dataset>``; return each writer's truth."""
    return {name: generate(name, Path(out_dir) / name, seed=seed, **sizes) for name, sizes in BENCHMARK_SIZES.items()}
