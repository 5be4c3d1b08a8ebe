"""Fuzz pass over every parser: seeded mutations of the synthetic raw files of each format.

The only outcomes allowed for a damaged dataset are:
- records that fit the schema (boxes finite and inside the image, integers that fit the Arrow columns),
- counted skips; then strict mode raises :class:`DataFormatError` (it must not pass what default mode skips),
- a whole-file error (a broken annotation file, a deleted required file): :class:`DataFormatError` or
  FileNotFoundError naming the file, in both modes.
Anything else (a TypeError from deep inside a parser, an OverflowError at Arrow time ...) is a bug.

The default suite runs a few fixed seeds per format (seconds); ``-m slow`` runs many more.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import FORMAT_MODULES, get_spec
from hf_personsearch.data.synthetic import generate

CASES = {name: (name, {}, ()) for name in FORMAT_MODULES} | {
    "crowdhuman": ("crowdhuman", {"num_train": 3, "num_val": 1}, ()),
    "luperson": ("luperson", {"num_crops": 4}, ()),
    "luperson_lmdb": ("luperson", {"num_crops": 4, "layout": "lmdb"}, ()),
    "msmt17": ("msmt17", {"num_train_ids": 2, "num_test_ids": 2, "num_cameras": 2}, ()),
    "cuhk03_mat": ("cuhk03", {}, ("images_detected", "images_labeled")),
}
"""Fuzz case -> (format, synthetic writer sizes, folders removed so that the other layout is read): every
format, smaller where the writer takes sizes, plus LUPerson's LMDB layout and CUHK03's cuhk-03.mat."""

NOT_ALTERED = (".mdb",)
"""Files whose bytes are not altered, only deleted: LMDB maps data.mdb into memory and trusts its pages, so a
changed byte can end the process (SIGBUS) inside the lmdb library, which no parser can catch (LMDB's design)."""

QUERY_OPTIONS = {"cuhk_sysu": {"gallery_size": 50}}
"""The synthetic CUHK-SYSU has TestG10/TestG50, not the default TestG100."""

REPLACEMENTS = [
    None,
    "",
    "x",
    "caf\u00e9",
    -1,
    0,
    1e20,
    -1e20,
    2**70,
    1.5,
    float("nan"),
    True,
    [],
    {},
    [1, 2],
    {"a": 1},
]
"""What a JSON value is replaced with: nulls, type changes, huge and non-integral numbers, empty containers."""


def _json_nodes(value, path=()):
    """Every (path, value) of a JSON document, containers included."""
    yield path, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _json_nodes(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _json_nodes(child, (*path, index))


def _mutate_json(document, rng: np.random.Generator):
    """Replace a random node with a value of :data:`REPLACEMENTS`, or delete it from its container."""
    nodes = list(_json_nodes(document))[1:]
    if not nodes:
        return REPLACEMENTS[rng.integers(len(REPLACEMENTS))]
    path, _ = nodes[rng.integers(len(nodes))]
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.2:
        del parent[path[-1]]
    else:
        parent[path[-1]] = REPLACEMENTS[rng.integers(len(REPLACEMENTS))]
    return document


def _mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Truncate, flip bytes, insert bytes that are not UTF-8, or empty the file."""
    kind = rng.integers(4)
    if kind == 0 or not data:
        return data[: rng.integers(len(data) + 1)]
    if kind == 1:
        mutable = bytearray(data)
        for position in rng.integers(len(data), size=rng.integers(1, 9)):
            mutable[position] = rng.integers(256)
        return bytes(mutable)
    if kind == 2:
        position = rng.integers(len(data) + 1)
        return data[:position] + b"\xff\xfe\xc3(" + data[position:]
    return b""


def mutate(root: Path, rng: np.random.Generator) -> str:
    """Damage one file of ``root`` in place; returns what was done (for the failure message)."""
    files = sorted(path for path in root.rglob("*") if path.is_file())
    target = files[rng.integers(len(files))]
    relative = target.relative_to(root)
    if rng.random() < 0.1 or target.suffix in NOT_ALTERED:
        target.unlink()
        return f"deleted {relative}"
    data = target.read_bytes()
    if target.suffix in (".json", ".odgt") and rng.random() < 0.7:
        if target.suffix == ".odgt":
            lines = data.decode().splitlines()
            k = rng.integers(len(lines))
            lines[k] = json.dumps(_mutate_json(json.loads(lines[k]), rng))
            target.write_text("\n".join(lines) + "\n")
        else:
            target.write_text(json.dumps(_mutate_json(json.loads(data), rng)))
        return f"JSON value changed in {relative}"
    if target.suffix == ".txt" and rng.random() < 0.5:
        lines = data.decode().splitlines()
        k = rng.integers(len(lines))
        fields = lines[k].split()
        if fields:
            fields[rng.integers(len(fields))] = str(REPLACEMENTS[rng.integers(len(REPLACEMENTS))])
        lines[k] = " ".join(fields)
        target.write_text("\n".join(lines) + "\n")
        return f"field changed in {relative}:{k + 1}"
    target.write_bytes(_mutate_bytes(data, rng))
    return f"bytes changed in {relative}"


def check_record(record: dict, where: str) -> None:
    """A record must fit the schema's Arrow columns and describe boxes inside its image."""
    width, height = record["width"], record["height"]
    assert 0 < width < 2**31 and 0 < height < 2**31, where
    assert -1 <= record["camera_id"] < 2**31, where
    assert record["person_ids"].dtype == np.int64 and len(record["person_ids"]) == len(record["boxes"]), where
    for key in ("boxes", "ignore_regions"):
        boxes = record[key]
        assert boxes.dtype == np.float32 and np.isfinite(boxes).all(), where
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all(), where
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all(), where
    image = record["image"]
    assert Path(image).is_file() if isinstance(image, str) else isinstance(image["bytes"], bytes), where


def run_parsers(case: str, root: Path, strict: bool) -> tuple[int, list]:
    """Parse every split (and the queries of a target dataset): (skips counted, records and queries)."""
    name = CASES[case][0]
    spec = get_spec(name)
    skips = SkipCounter(strict=strict)
    results = []
    for split in spec.splits:
        for record in spec.parse(root, split, skips=skips):
            check_record(record, f"{name} {split} {record['image_id']}")
            results.append(record)
    if spec.is_target:
        queries = spec.load_queries(root, spec.gallery_split, skips=skips, **QUERY_OPTIONS.get(name, {}))
        assert all(np.isfinite(query["box"]).all() for query in queries)
        results.extend(queries)
    return skips.total, results


def check_outcome(name: str, root: Path, what: str) -> None:
    try:
        skipped, _ = run_parsers(name, root, strict=False)
    except (DataFormatError, FileNotFoundError) as error:  # a whole file is unusable: named, in both modes
        assert str(root) in str(error), f"{what}: the error names no file of the dataset: {error}"
        skipped = True
    if skipped:
        with pytest.raises((DataFormatError, FileNotFoundError)) as raised:
            run_parsers(name, root, strict=True)
        assert str(root) in str(raised.value), f"{what}: the strict error names no file: {raised.value}"
    else:
        run_parsers(name, root, strict=True)


def write_case(case: str, root: Path) -> None:
    """The synthetic dataset of a fuzz case in ``root``."""
    name, sizes, removed = CASES[case]
    generate(name, root, seed=0, **sizes)
    for folder in removed:
        shutil.rmtree(root / folder)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One small synthetic dataset per case, written once; each fuzz run damages a copy."""
    roots = {}
    for case in CASES:
        roots[case] = tmp_path_factory.mktemp(case)
        write_case(case, roots[case])
    return roots


def _fuzz(name: str, seeds, pristine, tmp_path) -> None:
    for seed in seeds:
        root = tmp_path / f"{name}-{seed}"
        shutil.copytree(pristine[name], root)
        what = mutate(root, np.random.default_rng(seed))
        try:
            check_outcome(name, root, what)
        except BaseException as error:
            raise AssertionError(f"{name} seed {seed}: {what}: {type(error).__name__}: {error}") from error
        shutil.rmtree(root)


@pytest.mark.parametrize("name", CASES)
def test_fuzz_few_seeds(name, pristine, tmp_path):
    _fuzz(name, range(4), pristine, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_fuzz_many_seeds(name, pristine, tmp_path):
    _fuzz(name, range(4, 204), pristine, tmp_path)
