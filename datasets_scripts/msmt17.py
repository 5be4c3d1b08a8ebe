"""``datasets`` builder of msmt17 in the hf-personsearch unified schema.

Usage (datasets 5 no longer runs loading scripts; use the builder directly)::

    from datasets_scripts.msmt17 import MSMT17
    builder = MSMT17(data_dir="/path/to/your/local/copy")
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train")

or ``hf_personsearch.data.load_person_search_dataset("msmt17", data_dir=..., split=...)``. The splits,
the expected folder layout and where to obtain the data: ``hf_personsearch.data.formats.msmt17``.
"""

from hf_personsearch.data.builder import PersonSearchBuilder


class MSMT17(PersonSearchBuilder):
    """msmt17: see ``hf_personsearch.data.formats.msmt17`` for the raw format this reads."""

    DATASET_NAME = "msmt17"
