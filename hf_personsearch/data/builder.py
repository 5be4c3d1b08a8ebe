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
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import ClassVar

import datasets
import numpy as np

from .errors import DataFormatError, SkipCounter
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
        data_fingerprint: :func:`data_fingerprint` of ``data_dir``, filled in by the builder when not given.
            The cache key of ``datasets`` covers the config, not the files: without it an edited annotation
            or a deleted image would still be served from the old Arrow files.
    """

    strict: bool = False
    splits: tuple[str, ...] | None = None
    parse_options: dict = dataclasses.field(default_factory=dict)
    data_fingerprint: str = ""


class PersonSearchBuilder(datasets.GeneratorBasedBuilder):
    """Builds the unified records (:mod:`hf_personsearch.data.schema`) of ``DATASET_NAME``.

    Subclasses set ``DATASET_NAME`` to a name of :func:`hf_personsearch.data.formats.dataset_names`.
    After :meth:`download_and_prepare`, ``self.skip_reports`` maps each split to its skip report (logged by
    the parser when it runs, and from the stored counts on a cached load).
    """

    DATASET_NAME: ClassVar[str] = ""
    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = PersonSearchBuilderConfig

    def __init__(self, *args, **kwargs):
        if kwargs.get("data_dir") is not None and "data_fingerprint" not in kwargs:
            kwargs["data_fingerprint"] = data_fingerprint(kwargs["data_dir"])
        super().__init__(*args, **kwargs)

    def download_and_prepare(self, *args, **kwargs) -> None:
        """Prepare the Arrow files (or reuse them), then set :attr:`skip_reports` and log what was skipped.

        A cached load reports the skips stored with the Arrow files, so they are seen on every load. Errors of
        the parser (strict mode's :class:`DataFormatError`, a missing file) are raised as themselves, not as
        ``datasets``' "An error occurred while generating the dataset" that hides the file and line.
        """
        cached = os.path.exists(os.path.join(self._output_dir, datasets.config.DATASET_INFO_FILENAME))
        try:
            super().download_and_prepare(*args, **kwargs)
        except datasets.exceptions.DatasetGenerationError as error:
            cause = error.__cause__
            if isinstance(cause, (DataFormatError, FileNotFoundError)):
                raise type(cause)(str(cause)) from error
            raise
        self.skip_reports = {}
        for split in self.config.splits or self._spec().splits:
            path = Path(self._output_dir, SKIPS_FILE.format(split=split))
            if path.is_file():
                skips = SkipCounter.from_dict(json.loads(path.read_text(encoding="utf-8")))
                name = f"{self.DATASET_NAME}/{split}"
                self.skip_reports[split] = skips.report(name) if cached else skips.summary(name)

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
        # self._output_dir is the folder being prepared here: the counts land next to the Arrow files.
        Path(self._output_dir, SKIPS_FILE.format(split=split)).write_text(json.dumps(skips.to_dict()), "utf-8")


SKIPS_FILE = "skips-{split}.json"
"""The skip counts of a split, stored with its Arrow files (reported again on every cached load)."""


def data_fingerprint(data_dir: str | Path) -> str:
    """A hash of the name, size and modification time of every file under ``data_dir`` (symlinked folders
    followed, each real folder once): it changes when an annotation is edited or an image added or deleted.

    Every file is included, not only those a parser reads: the folder layouts differ per dataset, and a stat
    is cheap (0.1-0.2 s for 10k files, measured on a busy 2-core machine; the cost of a cached load).
    A missing ``data_dir`` gives "" (the parser then says where to obtain the data).
    """
    root = Path(data_dir)
    if not root.is_dir():
        return ""
    digest = hashlib.sha256()
    visited = set()
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            stat = folder.stat()
            if (stat.st_dev, stat.st_ino) in visited:  # a second link to a folder, or a link loop
                continue
            visited.add((stat.st_dev, stat.st_ino))
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:  # unreadable: hashed as such, the parser reports what it cannot read
            digest.update(f"{folder}\0{error.errno}\n".encode("utf-8", "surrogateescape"))
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    folders.append(Path(entry.path))
                    continue
                stat = entry.stat()
                line = f"{entry.path}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
            except OSError:  # a dangling symlink
                line = f"{entry.path}\0-\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


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
