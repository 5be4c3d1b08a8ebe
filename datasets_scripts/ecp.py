"""``datasets`` builder of ecp in the hf-personsearch unified schema.

Usage (datasets 5 no longer runs loading scripts; use the builder directly)::

    from datasets_scripts.ecp import EuroCityPersons
    builder = EuroCityPersons(data_dir="/path/to/your/local/copy")
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train")

or ``hf_personsearch.data.load_person_search_dataset("ecp", data_dir=..., split=...)``. The splits,
the expected folder layout and where to obtain the data: ``hf_personsearch.data.formats.ecp``.
"""

from hf_personsearch.data.builder import PersonSearchBuilder


class EuroCityPersons(PersonSearchBuilder):
    """ecp: see ``hf_personsearch.data.formats.ecp`` for the raw format this reads."""

    DATASET_NAME = "ecp"
