"""One call from a raw dataset folder to a ``datasets.Dataset`` of unified records.

``load_person_search_dataset("prw", data_dir="/data/PRW-v16.04.20", split="train")`` builds (once,
cached under ``cache_dir``) the Arrow files of the dataset with its builder and returns the split.
This is the replacement for ``load_dataset("script.py")``, which datasets 5 no longer runs.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from .builder import builder_class


def load_person_search_dataset(
    name: str,
    data_dir: str | Path | None = None,
    split: str = "train",
    strict: bool = False,
    cache_dir: str | Path | None = None,
    **parse_options,
) -> datasets.Dataset:
    """Prepare (if not cached) and return one split of dataset ``name`` in the unified schema.

    Args:
        name: a registered dataset (:func:`hf_personsearch.data.formats.dataset_names`: "crowdhuman", "prw" ...).
        data_dir: the user's local copy; when missing, the error says where to obtain the dataset.
        split: one of the dataset's ``DatasetSpec.splits``; only that split is prepared, so a user without e.g.
            CUHK03's protocol file can still load its "full" split.
        strict: raise on the first bad annotation/image instead of skipping and counting.
        cache_dir: where the Arrow files go; default: the ``datasets`` cache (HF_DATASETS_CACHE).
        **parse_options: extra parser arguments (``box_type="vbox"``, ``image_type="labeled"`` ...).
    """
    builder = builder_class(name)(
        data_dir=None if data_dir is None else str(data_dir),
        cache_dir=None if cache_dir is None else str(cache_dir),
        strict=strict,
        splits=(split,),
        parse_options=parse_options,
    )
    builder.download_and_prepare()
    return builder.as_dataset(split=split)
