"""``datasets`` builder of crowdhuman in the hf-personsearch unified schema.

Usage (datasets 5 no longer runs loading scripts; use the builder directly)::

    from datasets_scripts.crowdhuman import CrowdHuman
    builder = CrowdHuman(data_dir="/path/to/your/local/copy")
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train")

or ``hf_personsearch.data.load_person_search_dataset("crowdhuman", data_dir=..., split=...)``. The splits,
the expected folder layout and where to obtain the data: ``hf_personsearch.data.formats.crowdhuman``.
"""

from hf_personsearch.data.builder import PersonSearchBuilder


class CrowdHuman(PersonSearchBuilder):
    """crowdhuman: see ``hf_personsearch.data.formats.crowdhuman`` for the raw format this reads."""

    DATASET_NAME = "crowdhuman"
