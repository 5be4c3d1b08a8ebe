"""``datasets`` builder of posetrack21 in the hf-personsearch unified schema.

Usage (datasets 5 no longer runs loading scripts; use the builder directly)::

    from datasets_scripts.posetrack21 import PoseTrack21
    builder = PoseTrack21(data_dir="/path/to/your/local/copy")
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train")

or ``hf_personsearch.data.load_person_search_dataset("posetrack21", data_dir=..., split=...)``. The splits,
the expected folder layout and where to obtain the data: ``hf_personsearch.data.formats.posetrack21``.
"""

from hf_personsearch.data.builder import PersonSearchBuilder


class PoseTrack21(PersonSearchBuilder):
    """posetrack21: see ``hf_personsearch.data.formats.posetrack21`` for the raw format this reads."""

    DATASET_NAME = "posetrack21"
