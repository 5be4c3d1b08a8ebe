"""``datasets`` builder of ecp in the hf-personsearch unified schema.

Usage (datasets 5 no longer runs loading scripts; use the builder directly)::

    from datasets_scripts.ecp import EuroCityPersons
    builder = EuroCityPersons(data_dir="/path/to/your/local/copy")
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train")

or ``hf_personsearch.data.load_person_search_dataset("ecp", data_dir=..., split=...)``. The splits,
the expected folder layout and where to obtain the data: ``hf_personsearch.data.formats.ecp``.
The class is the package's own builder of the dataset (named by its ``SPEC.builder_name``, which also
names the cache folder), so this file and ``load_person_search_dataset`` share one cache.
"""

from hf_personsearch.data.builder import builder_class

EuroCityPersons = builder_class("ecp")
