"""What a dataset is, declared once per parser module: ``SPEC = DatasetSpec(...)``.

Everything that depends on the dataset (the builder's class name, the loading and conversion choices, the
synthetic writer, the pre-training task of its records, the fine-tuning splits and the evaluation protocol)
reads the spec through the registry of :mod:`hf_personsearch.data.formats`, so a new format is one new
parser module and one line there (or :func:`hf_personsearch.data.formats.register`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..schema import TASKS


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset format.

    Attributes:
        name: the user-facing name (``load_person_search_dataset(name, ...)``, config ``sources[].name``,
            the records' ``source``); the parser module's name for the built-in formats.
        display_name: the name papers and model cards use ("CUHK-SYSU", "EuroCity Persons" ...).
        builder_name: the class name of its ``datasets`` builder; it also names the builder's cache folder,
            so it never changes once released.
        task: the schema task of its records: "detection", "reid" or "search".
        splits: the split names ``parse`` accepts.
        parse: ``parse(data_dir, split, *, strict=False, skips=None, **options) -> Iterator[record]``.
        synthetic_writer: the module whose ``write(out_dir, seed=0, **sizes) -> {"records": ...}`` writes
            synthetic data in the raw format (tests and the demo cannot ship the real datasets).
        how_to_obtain: where a user gets the data (none of the datasets may be redistributed).
        data_url: the dataset's home page.

    Target datasets (fine-tuning and person search evaluation) also set:
        train_split / gallery_split: the split that trains and the split the queries are searched in.
        protocol: the :func:`hf_personsearch.evaluation.evaluate_search` protocol ("prw", "cuhk_sysu",
            "posetrack21"); for data that states its own (``read_protocol``), the default.
        load_queries: ``load_queries(data_dir, gallery_split, *, strict=False, skips=None, ...)`` -> queries.
        gallery_sizes: the per-query gallery sizes the data provides (CUHK-SYSU's TestG{N}); () = none, every
            other image of the gallery split is searched.
        default_gallery_size: the size used when none is asked for (CUHK-SYSU: 100, what published tables
            report); None for datasets without gallery sizes.
        read_protocol: ``read_protocol(data_dir) -> protocol`` for data that states its protocol (custom).
    """

    name: str
    display_name: str
    builder_name: str
    task: str
    splits: tuple[str, ...]
    parse: Callable
    synthetic_writer: str
    how_to_obtain: str
    data_url: str = ""
    train_split: str | None = None
    gallery_split: str | None = None
    protocol: str | None = None
    load_queries: Callable | None = None
    gallery_sizes: tuple[int, ...] = ()
    default_gallery_size: int | None = None
    read_protocol: Callable | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.name.isidentifier():
            problems.append(f"name {self.name!r} is not a Python identifier (it names a module and a cache)")
        if not self.builder_name.isidentifier():
            problems.append(f"builder_name {self.builder_name!r} is not a class name")
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {TASKS}")
        if not self.splits:
            problems.append("splits is empty")
        if not callable(self.parse):
            problems.append("parse is not callable")
        if self.protocol is not None:
            if self.task != "search":
                problems.append(f"a target dataset's task must be 'search', got {self.task!r}")
            for field in ("train_split", "gallery_split"):
                if getattr(self, field) not in self.splits:
                    problems.append(f"{field} {getattr(self, field)!r} is not one of splits {self.splits}")
            if not callable(self.load_queries):
                problems.append("a target dataset needs a callable load_queries")
        elif any((self.train_split, self.gallery_split, self.load_queries, self.gallery_sizes, self.read_protocol)):
            problems.append("target fields (splits, load_queries, gallery sizes, read_protocol) without a protocol")
        if (self.default_gallery_size is None) != (not self.gallery_sizes) or (
            self.default_gallery_size is not None and self.default_gallery_size not in self.gallery_sizes
        ):
            problems.append(
                f"default_gallery_size {self.default_gallery_size} must be one of gallery_sizes {self.gallery_sizes}"
            )
        if problems:
            raise ValueError(f"DatasetSpec {self.name!r}: " + "; ".join(problems))

    @property
    def is_target(self) -> bool:
        """Fine-tuning and person search evaluation accept this dataset (it has a protocol)."""
        return self.protocol is not None

    def protocol_of(self, data_dir: str | Path) -> str:
        """The evaluation protocol of the copy in ``data_dir``: what the data states, else :attr:`protocol`."""
        if not self.is_target:
            raise ValueError(f"{self.name} is not a target dataset: it has no evaluation protocol")
        return self.read_protocol(data_dir) if self.read_protocol is not None else self.protocol

    def synthetic_size_names(self) -> list[str] | None:
        """The size arguments (numbers of images, identities, ...) :attr:`synthetic_writer`'s
        ``write(out_dir, seed=..., **sizes)`` takes; None when it takes any keyword (``**kwargs``)."""
        parameters = list(inspect.signature(importlib.import_module(self.synthetic_writer).write).parameters.values())
        if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
            return None
        keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [p.name for p in parameters[1:] if p.kind in keywords and p.name != "seed"]  # [0]: out_dir

    def check_synthetic_sizes(self, sizes: Mapping) -> None:
        """Raise ValueError naming the keys of ``sizes`` this format's synthetic writer does not take."""
        names = self.synthetic_size_names()
        unknown = sorted(set(sizes) - set(names)) if names is not None else []
        if unknown:
            raise ValueError(f"{self.name}: unknown synthetic size(s) {unknown}; its writer takes {names}")

    def write_synthetic(self, out_dir: str | Path, seed: int = 0, **sizes) -> dict:
        """Write synthetic data of this format under ``out_dir`` with :attr:`synthetic_writer` (its truth)."""
        self.check_synthetic_sizes(sizes)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return importlib.import_module(self.synthetic_writer).write(out_dir, seed=seed, **sizes)
