"""``datasets`` builders for every raw format: one generic builder over the parsers of ``formats/``.

datasets 5 no longer runs loading scripts through ``load_dataset``, but a
``datasets.GeneratorBasedBuilder`` subclass still prepares Arrow files and serves splits::

    builder = CrowdHuman(data_dir="/data/CrowdHuman")
    builder.download_and_prepare()
    train = builder.as_dataset("train")

:class:`PersonSearchBuilder` does the work for any registered dataset; :func:`builder_class` makes its
class, named after the dataset's ``DatasetSpec.builder_name`` (``datasets_scripts/<name>.py`` re-export it).
Nothing is downloaded: the data is the user's local copy (none of these datasets may be redistributed) and a
missing ``data_dir`` says where to get it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import datasets
import numpy as np

from .errors import SkipCounter
from .formats import DatasetSpec, get_spec
from .schema import features

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PersonSearchBuilderConfig(datasets.BuilderConfig):
    """Options of a person search builder.

    Attributes:
        strict: raise on the first bad annotation or image instead of skipping and counting it.
            Default False: real datasets have a few broken files and users want them reported, not fatal.
        splits: which of the parser's ``SPLITS`` to prepare; None (default) prepares them all. Useful
            when some split needs files the user does not have (e.g. CUHK03's protocol file).
        parse_options: extra keyword arguments of the parser (``box_type`` for CrowdHuman,
            ``image_type`` for CUHK03, ...), recorded in the config so they key the cache.
    """

    strict: bool = False
    splits: tuple[str, ...] | None = None
    parse_options: dict = dataclasses.field(default_factory=dict)


class PersonSearchBuilder(datasets.GeneratorBasedBuilder):
    """Builds the unified records (:mod:`hf_personsearch.data.schema`) of ``DATASET_NAME``.

    Subclasses set ``DATASET_NAME`` to a name of :func:`hf_personsearch.data.formats.dataset_names`.
    After preparation, ``self.skip_reports`` maps each split to the parser's skip report (the parser also
    logs it).
    """

    DATASET_NAME: ClassVar[str] = ""
    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = PersonSearchBuilderConfig

    def _spec(self) -> DatasetSpec:
        try:
            return get_spec(self.DATASET_NAME)
        except ValueError as error:
            raise TypeError(f"{type(self).__name__}.DATASET_NAME: {error}") from error

    def _info(self) -> datasets.DatasetInfo:
        spec = self._spec()
        return datasets.DatasetInfo(
            description=f"{spec.display_name} in the hf-personsearch unified schema. {spec.how_to_obtain}",
            features=features(),
            homepage=spec.data_url,
        )

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        spec = self._spec()
        splits = self.config.splits or spec.splits
        unknown = [split for split in splits if split not in spec.splits]
        if unknown:
            raise ValueError(f"{self.DATASET_NAME}: unknown split(s) {unknown}; expected among {spec.splits}")
        if self.config.data_dir is None:
            raise FileNotFoundError(f"{self.DATASET_NAME}: pass data_dir=<your local copy>. {spec.how_to_obtain}")
        return [datasets.SplitGenerator(name=split, gen_kwargs={"split": split}) for split in splits]

    def _generate_examples(self, split: str):
        skips = SkipCounter(strict=self.config.strict)
        parse = self._spec().parse
        for key, record in enumerate(parse(self.config.data_dir, split, skips=skips, **self.config.parse_options)):
            yield key, to_example(record)
        if not hasattr(self, "skip_reports"):
            self.skip_reports = {}
        self.skip_reports[split] = skips.summary(f"{self.DATASET_NAME}/{split}")


def to_example(record: dict) -> dict:
    """A parser record as a ``datasets`` example (numpy arrays -> lists, in :func:`features` order)."""
    example = dict(record)
    for key in ("boxes", "ignore_regions"):
        example[key] = np.asarray(record[key], np.float32).reshape(-1, 4).tolist()
    example["person_ids"] = np.asarray(record["person_ids"], np.int64).reshape(-1).tolist()
    return example


_CLASSES: dict[str, type[PersonSearchBuilder]] = {}


def builder_class(name: str) -> type[PersonSearchBuilder]:
    """The builder class of dataset ``name``, named ``DatasetSpec.builder_name`` (which names its cache
    folder); one class per dataset, also the one ``datasets_scripts/<name>.py`` exports."""
    spec = get_spec(name)
    if name not in _CLASSES:
        _CLASSES[name] = type(
            spec.builder_name,
            (PersonSearchBuilder,),
            {"DATASET_NAME": name, "__module__": __name__, "__doc__": f"Builder of {name} (see PersonSearchBuilder)."},
        )
    return _CLASSES[name]
