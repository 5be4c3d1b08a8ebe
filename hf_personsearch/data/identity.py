"""One global identity index across every pre-training source (paper, Method: "Data unification").

The paper's hybrid learning trains one OIM table over all sub-task data, so every person of every
source needs a place in ONE identity index without collisions:

- a labeled re-ID person (MSMT17, CUHK03) keeps its identity: all crops of source id ``k`` share one
  global id;
- every detection box (CrowdHuman, ECP) and every unlabeled re-ID crop (LUPerson) is "regarded as a
  different person" and gets a NEW global id of its own.

Layout: source ``s`` owns the contiguous block ``[offset_s, offset_s + num_labeled_s + num_new_s)``.
Its labeled ids come first (``offset_s + rank of the source id among that source's sorted ids``),
then one new id per unlabeled box, numbered in record order and box order inside the record
(``offset_s + num_labeled_s + boxes of earlier records + position among this record's unlabeled boxes``).
Everything is computed from per-record box counts, so every process that builds the space from the
same data gets the same ids (the OIM table must be identical on every rank), and nothing is drawn at
random.

Each source also gets a domain id, its index among the sources of the same IAM task (detection
sources ``0..M-1``, re-ID sources ``0..N-1``), which the intra-task alignment modules classify.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .schema import NO_IDENTITY, TASKS


def alignment_task(task: str) -> str:
    """The IAM a source feeds: "reid" for re-ID crops, "detection" for scene images.

    "search" sources (scene images with boxes and ids) are scene images like detection data, so they
    share the detection IAM (the re-ID IAM exists to align crop-sourced canvases).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return "reid" if task == "reid" else "detection"


@dataclass
class SourceIdentities:
    """The identity block of one source.

    Attributes:
        name: source dataset name (schema ``source``).
        task: the source's schema task ("detection", "reid" or "search").
        domain_id: index of the source among the sources of its IAM task (:func:`alignment_task`).
        offset: first global id of the block.
        labeled_ids: sorted distinct source identities that are kept (empty for detection sources).
        new_id_starts: (num_records + 1,) cumulative count of boxes that get a new id, by record:
            record ``r``'s new ids start at ``offset + len(labeled_ids) + new_id_starts[r]``.
    """

    name: str
    task: str
    domain_id: int
    offset: int
    labeled_ids: np.ndarray
    new_id_starts: np.ndarray = field(repr=False)

    @property
    def num_labeled(self) -> int:
        return len(self.labeled_ids)

    @property
    def num_new(self) -> int:
        return int(self.new_id_starts[-1])

    @property
    def num_identities(self) -> int:
        return self.num_labeled + self.num_new

    @property
    def num_records(self) -> int:
        return len(self.new_id_starts) - 1


class IdentitySpace:
    """Maps (source, record, source person ids) to global identities; see the module docstring.

    Build it with :meth:`from_person_ids` (or :meth:`from_records`) from every record of every source,
    in the order the dataset indexes them.
    """

    def __init__(self, sources: Sequence[SourceIdentities]):
        self.sources = list(sources)
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be distinct, got {names}")
        self._by_name = {s.name: i for i, s in enumerate(self.sources)}

    @classmethod
    def from_person_ids(cls, sources: Sequence[tuple[str, str, Iterable[Sequence[int]]]]) -> IdentitySpace:
        """Build the space from ``(name, task, per-record person_ids)`` for every source, in order.

        For a "detection" source every box gets a new id whatever its person id (the paper regards
        each detection box as a different person); for "reid" and "search" sources ids other than
        :data:`NO_IDENTITY` are kept and :data:`NO_IDENTITY` boxes get a new id.
        """
        built: list[SourceIdentities] = []
        offset = 0
        domain_counts = {"detection": 0, "reid": 0}
        for name, task, per_record_ids in sources:
            group = alignment_task(task)
            labeled: set[int] = set()
            new_counts: list[int] = []
            for ids in per_record_ids:
                ids = np.asarray(ids, dtype=np.int64).reshape(-1)
                if task == "detection":
                    new_counts.append(len(ids))
                    continue
                known = ids[ids != NO_IDENTITY]
                if (known < 0).any():
                    raise ValueError(
                        f"source {name!r}, record {len(new_counts)}: person id {int(known[known < 0][0])} is "
                        f"negative; only NO_IDENTITY={NO_IDENTITY} may be negative"
                    )
                labeled.update(known.tolist())
                new_counts.append(len(ids) - len(known))
            starts = np.zeros(len(new_counts) + 1, dtype=np.int64)
            np.cumsum(new_counts, out=starts[1:])
            block = SourceIdentities(
                name=name,
                task=task,
                domain_id=domain_counts[group],
                offset=offset,
                labeled_ids=np.array(sorted(labeled), dtype=np.int64),
                new_id_starts=starts,
            )
            domain_counts[group] += 1
            offset += block.num_identities
            built.append(block)
        return cls(built)

    @classmethod
    def from_records(cls, sources: Sequence[tuple[str, str, Iterable[dict]]]) -> IdentitySpace:
        """Same as :meth:`from_person_ids` from unified records (only ``person_ids`` is read)."""
        return cls.from_person_ids(
            [(name, task, (r["person_ids"] for r in records)) for name, task, records in sources]
        )

    @property
    def num_identities(self) -> int:
        """Total number of global identities: the size of the pre-training OIM lookup table."""
        return sum(s.num_identities for s in self.sources)

    def source_index(self, name: str) -> int:
        if name not in self._by_name:
            raise KeyError(f"unknown source {name!r}; the identity space has {list(self._by_name)}")
        return self._by_name[name]

    def num_domains(self, group: str) -> int:
        """Number of sources feeding the "detection" or "reid" IAM (its number of domain classes)."""
        return sum(1 for s in self.sources if alignment_task(s.task) == group)

    def global_ids(self, source_index: int, record_index: int, person_ids: Sequence[int]) -> np.ndarray:
        """Global ids of one record's persons, in the record's box order."""
        block = self.sources[source_index]
        if not 0 <= record_index < block.num_records:
            raise IndexError(f"source {block.name!r}: record {record_index} outside 0..{block.num_records - 1}")
        ids = np.asarray(person_ids, dtype=np.int64).reshape(-1)
        first_new = block.offset + block.num_labeled + block.new_id_starts[record_index]
        expected_new = int(block.new_id_starts[record_index + 1] - block.new_id_starts[record_index])
        new = np.ones(len(ids), dtype=bool) if block.task == "detection" else ids == NO_IDENTITY
        if int(new.sum()) != expected_new:
            raise ValueError(
                f"source {block.name!r}, record {record_index}: {int(new.sum())} boxes need a new id but the "
                f"identity space was built with {expected_new}; build it from the same records"
            )
        out = np.empty(len(ids), dtype=np.int64)
        out[new] = first_new + np.arange(expected_new, dtype=np.int64)
        kept = ids[~new]
        rank = np.searchsorted(block.labeled_ids, kept)
        known = rank < block.num_labeled
        known[known] = block.labeled_ids[rank[known]] == kept[known]
        if not known.all():
            raise ValueError(
                f"source {block.name!r}, record {record_index}: person ids {kept[~known].tolist()} were not in the records the space was built from"
            )
        out[~new] = block.offset + rank
        return out

    def agreement_facts(self) -> dict[str, int | str]:
        """What every training process must share about the space, by name: each source's records,
        labeled and new identities and first global id, the total, and the sha256 of :meth:`to_dict`
        (which also covers the labeled ids themselves).

        Every process builds its own space from the data it reads; an OIM row means the same person on
        every process only if these facts are equal everywhere, which the training loop checks before the
        first step (a node-local copy with one image fewer shifts every later offset).
        """
        facts: dict[str, int | str] = {"identities in all": self.num_identities}
        for block in self.sources:
            facts[f"{block.name}: records"] = block.num_records
            facts[f"{block.name}: labeled identities"] = block.num_labeled
            facts[f"{block.name}: new identities"] = block.num_new
            facts[f"{block.name}: first global id"] = block.offset
        description = json.dumps(self.to_dict(), sort_keys=True).encode()
        facts["identity space sha256"] = hashlib.sha256(description).hexdigest()
        return facts

    def to_dict(self) -> dict:
        """A JSON-serialisable description (saved with the run); :meth:`from_dict` rebuilds the space."""
        return {
            "num_identities": self.num_identities,
            "no_identity": NO_IDENTITY,
            "sources": [
                {
                    "name": s.name,
                    "task": s.task,
                    "alignment_task": alignment_task(s.task),
                    "domain_id": s.domain_id,
                    "offset": s.offset,
                    "num_labeled": s.num_labeled,
                    "num_new": s.num_new,
                    "num_records": s.num_records,
                    "labeled_ids": s.labeled_ids.tolist(),
                    "new_id_starts": s.new_id_starts.tolist(),
                }
                for s in self.sources
            ],
        }

    @classmethod
    def from_dict(cls, description: dict) -> IdentitySpace:
        sources = [
            SourceIdentities(
                name=s["name"],
                task=s["task"],
                domain_id=int(s["domain_id"]),
                offset=int(s["offset"]),
                labeled_ids=np.asarray(s["labeled_ids"], dtype=np.int64),
                new_id_starts=np.asarray(s["new_id_starts"], dtype=np.int64),
            )
            for s in description["sources"]
        ]
        return cls(sources)
