"""``datasets`` builders for every raw format: one generic builder over the parsers of ``formats/``.

datasets 5 no longer runs loading scripts through ``load_dataset``, but a
``datasets.GeneratorBasedBuilder`` subclass still prepares Arrow files and serves splits::

    builder = CrowdHuman(data_dir="/data/CrowdHuman")
    builder.download_and_prepare()
    train = builder.as_dataset("train")

:class:`PersonSearchBuilder` does the work for any parser; ``datasets_scripts/<name>.py`` (and
:func:`builder_class`) only name the dataset. Nothing is downloaded: the data is the user's local
copy (none of these datasets may be redistributed) and a missing ``data_dir`` says where to get it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import datasets
import numpy as np

from .errors import SkipCounter
from .formats import FORMAT_MODULES, get_format
from .schema import features

logger = logging.getLogger(__name__)

CLASS_NAMES = {
    "crowdhuman": "CrowdHuman",
    "ecp": "EuroCityPersons",
    "msmt17": "MSMT17",
    "cuhk03": "CUHK03",
    "luperson": "LUPerson",
    "prw": "PRW",
    "cuhk_sysu": "CUHKSYSU",
    "posetrack21": "PoseTrack21",
    "custom": "CustomPersonSearch",
}


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

    Subclasses set ``DATASET_NAME`` to a key of :data:`hf_personsearch.data.formats.FORMAT_MODULES`.
    After preparation, ``self.skip_reports`` maps each split to the parser's skip report.
    """

    DATASET_NAME: ClassVar[str] = ""
    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = PersonSearchBuilderConfig

    def _parser(self):
        if self.DATASET_NAME not in FORMAT_MODULES:
            raise TypeError(f"{type(self).__name__}.DATASET_NAME must be one of {FORMAT_MODULES}")
        return get_format(self.DATASET_NAME)

    def _info(self) -> datasets.DatasetInfo:
        module = self._parser()
        return datasets.DatasetInfo(
            description=f"{self.DATASET_NAME} in the hf-personsearch unified schema. {module.HOW_TO_OBTAIN}",
            features=features(),
            homepage=getattr(module, "DATA_URL", ""),
        )

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        module = self._parser()
        splits = self.config.splits or module.SPLITS
        unknown = [split for split in splits if split not in module.SPLITS]
        if unknown:
            raise ValueError(f"{self.DATASET_NAME}: unknown split(s) {unknown}; expected among {module.SPLITS}")
        if self.config.data_dir is None:
            raise FileNotFoundError(f"{self.DATASET_NAME}: pass data_dir=<your local copy>. {module.HOW_TO_OBTAIN}")
        return [datasets.SplitGenerator(name=split, gen_kwargs={"split": split}) for split in splits]

    def _generate_examples(self, split: str):
        skips = SkipCounter(strict=self.config.strict)
        parse = self._parser().parse
        for key, record in enumerate(parse(self.config.data_dir, split, skips=skips, **self.config.parse_options)):
            yield key, to_example(record)
        if not hasattr(self, "skip_reports"):
            self.skip_reports = {}
        self.skip_reports[split] = skips.report(f"{self.DATASET_NAME}/{split}")


def to_example(record: dict) -> dict:
    """A parser record as a ``datasets`` example (numpy arrays -> lists, in :func:`features` order)."""
    example = dict(record)
    for key in ("boxes", "ignore_regions"):
        example[key] = np.asarray(record[key], np.float32).reshape(-1, 4).tolist()
    example["person_ids"] = np.asarray(record["person_ids"], np.int64).reshape(-1).tolist()
    return example


_CLASSES: dict[str, type[PersonSearchBuilder]] = {}


def builder_class(name: str) -> type[PersonSearchBuilder]:
    """The builder class of dataset ``name`` (same class name as in ``datasets_scripts/``, so both
    share one cache folder)."""
    if name not in CLASS_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {tuple(CLASS_NAMES)}")
    if name not in _CLASSES:
        _CLASSES[name] = type(
            CLASS_NAMES[name],
            (PersonSearchBuilder,),
            {"DATASET_NAME": name, "__module__": __name__, "__doc__": f"Builder of {name} (see PersonSearchBuilder)."},
        )
    return _CLASSES[name]
