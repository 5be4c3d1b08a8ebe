"""``datasets`` builder of cuhk_sysu in the hf-personsearch unified schema.

Usage (datasets 5 no longer runs loading scripts; use the builder directly)::

    from datasets_scripts.cuhk_sysu import CUHKSYSU
    builder = CUHKSYSU(data_dir="/path/to/your/local/copy")
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train")

or ``hf_personsearch.data.load_person_search_dataset("cuhk_sysu", data_dir=..., split=...)``. The splits,
the expected folder layout and where to obtain the data: ``hf_personsearch.data.formats.cuhk_sysu``.
"""

from hf_personsearch.data.builder import PersonSearchBuilder


class CUHKSYSU(PersonSearchBuilder):
    """cuhk_sysu: see ``hf_personsearch.data.formats.cuhk_sysu`` for the raw format this reads."""

    DATASET_NAME = "cuhk_sysu"
