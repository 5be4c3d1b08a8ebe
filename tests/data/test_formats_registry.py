"""The dataset registry: one DatasetSpec per parser module, complete and consistent, and a format registered at
run time reaching loading, the builder, synthetic generation, the convert CLI and the pre-training task lookup."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_personsearch.data import builder, convert, formats
from hf_personsearch.data.errors import SkipCounter, reports_skips
from hf_personsearch.data.formats import FORMAT_MODULES, DatasetSpec, get_spec, record_differences
from hf_personsearch.data.formats._common import BAD_LINE, check_data_dir, check_split, clean_box, read_image_size
from hf_personsearch.data.loading import load_person_search_dataset
from hf_personsearch.data.schema import NO_IDENTITY, make_record
from hf_personsearch.data.synthetic import __main__ as synthetic_cli
from hf_personsearch.evaluation.search import PROTOCOLS
from hf_personsearch.training.pretraining import domain_counts

SCRIPTS = Path(__file__).resolve().parents[2] / "datasets_scripts"


def parser_modules() -> list[str]:
    """The modules of the formats package that define a ``parse`` function (helpers such as matlab do not)."""
    names = []
    for info in pkgutil.iter_modules(formats.__path__):
        module = importlib.import_module(f"{formats.__name__}.{info.name}")
        if callable(getattr(module, "parse", None)):
            names.append(info.name)
    return sorted(names)


def test_registry_names_are_the_parser_modules():
    assert sorted(FORMAT_MODULES) == parser_modules()
    assert formats.dataset_names() == FORMAT_MODULES
    for name in FORMAT_MODULES:
        module = importlib.import_module(f"{formats.__name__}.{name}")
        spec = get_spec(name)
        assert spec is module.SPEC and spec.name == name
        assert spec.parse is module.parse and spec.splits == module.SPLITS
    specs = [get_spec(name) for name in FORMAT_MODULES]
    assert len({spec.display_name for spec in specs}) == len({spec.builder_name for spec in specs}) == len(specs)
    assert formats.target_names() == tuple(spec.name for spec in specs if spec.protocol is not None)
    with pytest.raises(ValueError, match="unknown dataset 'coco'; expected one of .*'posetrack21'"):
        get_spec("coco")


@pytest.mark.parametrize("name", FORMAT_MODULES)
def test_every_spec_is_complete_and_its_splits_parse_synthetic_data(name, tmp_path):
    spec = get_spec(name)
    assert callable(importlib.import_module(spec.synthetic_writer).write)
    assert spec.how_to_obtain and spec.data_url
    truth = spec.write_synthetic(tmp_path, seed=0)
    written = sorted({record["split"] for record in truth["records"]})
    assert set(written) <= set(spec.splits)
    by_split = {}
    for split in spec.splits:
        by_split[split] = list(spec.parse(tmp_path, split, strict=True))
        assert by_split[split]
        assert {(r["source"], r["task"], r["split"]) for r in by_split[split]} == {(name, spec.task, split)}
    if spec.is_target:
        assert spec.task == "search" and spec.protocol in PROTOCOLS and spec.protocol_of(tmp_path) in PROTOCOLS
        assert {spec.train_split, spec.gallery_split} <= set(written)
        # The full-set protocol for datasets with gallery sizes: the small synthetic data has no TestG100.
        options = {"gallery_size": None} if spec.gallery_sizes else {}
        queries = spec.load_queries(tmp_path, spec.gallery_split, strict=True, **options)
        gallery = {record["image_id"] for record in by_split[spec.gallery_split]}
        assert queries and all(query["image_id"] in gallery for query in queries)
    script = SCRIPTS / f"{name}.py"
    assert f'{spec.builder_name} = builder_class("{name}")' in script.read_text()


def test_only_cuhk_sysu_has_gallery_sizes_with_its_standard_default():
    sized = {name: get_spec(name) for name in formats.target_names() if get_spec(name).gallery_sizes}
    assert list(sized) == ["cuhk_sysu"]
    assert sized["cuhk_sysu"].default_gallery_size == 100 and 100 in sized["cuhk_sysu"].gallery_sizes


def test_inconsistent_specs_are_rejected():
    prw = get_spec("prw")
    with pytest.raises(ValueError, match="gallery_split 'query' is not one of splits"):
        dataclasses.replace(prw, gallery_split="query")
    with pytest.raises(ValueError, match="a target dataset's task must be 'search'"):
        dataclasses.replace(prw, task="reid")
    with pytest.raises(ValueError, match="task 'scene' is not one of"):
        dataclasses.replace(get_spec("ecp"), task="scene")
    with pytest.raises(ValueError, match="target fields .* without a protocol"):
        dataclasses.replace(prw, protocol=None)
    with pytest.raises(ValueError, match="default_gallery_size 30 must be one of gallery_sizes"):
        dataclasses.replace(get_spec("cuhk_sysu"), default_gallery_size=30)
    with pytest.raises(ValueError, match="already registered"):
        formats.register(prw)


# A minimal format defined here, outside the package: "<split>.csv" lines "image,x1,y1,x2,y2" (pixels).

CSV_NAME = "csv_boxes"


@reports_skips(CSV_NAME)
def parse_csv_boxes(data_dir, split: str, *, strict: bool = False, skips: SkipCounter | None = None):
    check_split(split, ("train",), CSV_NAME)
    root = check_data_dir(data_dir, CSV_NAME, "written by this test", "a folder with train.csv")
    path = root / f"{split}.csv"
    boxes_of = defaultdict(list)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name, *numbers = line.split(",")
        if len(numbers) != 4:
            skips.skip(BAD_LINE, f"{path}:{number}", f"expected image,x1,y1,x2,y2, got {line!r}")
            continue
        boxes_of[name].append((numbers, f"{path}:{number}"))
    for name in sorted(boxes_of):
        size = read_image_size(root / name, str(path), skips)
        if size is None:
            continue
        boxes = [clean_box(numbers, size[0], size[1], where, skips) for numbers, where in boxes_of[name]]
        boxes = [box for box in boxes if box is not None]
        yield make_record(
            image=str(root / name),
            image_id=name,
            width=size[0],
            height=size[1],
            boxes=boxes,
            person_ids=[NO_IDENTITY] * len(boxes),
            source=CSV_NAME,
            task="detection",
            split=split,
        )


def write(out_dir: Path, *, seed: int = 0, num_images: int = 2) -> dict:
    """The synthetic writer of csv_boxes (this module is its ``synthetic_writer``)."""
    rng = np.random.default_rng(seed)
    records, lines = [], []
    for index in range(num_images):
        name = f"image_{index}.png"
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(out_dir / name)
        box = [float(rng.integers(0, 10)), float(rng.integers(0, 8)), float(rng.integers(12, 32)), 20.0]
        lines.append(",".join([name, *(str(v) for v in box)]))
        records.append(
            make_record(
                image=str(out_dir / name),
                image_id=name,
                width=32,
                height=24,
                boxes=[box],
                person_ids=[NO_IDENTITY],
                source=CSV_NAME,
                task="detection",
                split="train",
            )
        )
    (out_dir / "train.csv").write_text("\n".join(lines) + "\n")
    return {"records": records}


@pytest.fixture
def csv_boxes(monkeypatch):
    """csv_boxes registered for one test (the registry and the builder classes restored afterwards)."""
    monkeypatch.setattr(formats, "_REGISTERED", {})
    monkeypatch.setattr(builder, "_CLASSES", {})
    return formats.register(
        DatasetSpec(
            name=CSV_NAME,
            display_name="CSV boxes",
            builder_name="CsvBoxes",
            task="detection",
            splits=("train",),
            parse=parse_csv_boxes,
            synthetic_writer=__name__,
            how_to_obtain="written by tests/data/test_formats_registry.py",
        )
    )


def test_a_registered_format_reaches_every_consumer(csv_boxes, tmp_path, capsys):
    assert formats.dataset_names() == (*FORMAT_MODULES, CSV_NAME) and get_spec(CSV_NAME) is csv_boxes
    assert CSV_NAME not in formats.target_names()

    synthetic_cli.main([CSV_NAME, str(tmp_path / "raw"), "--size", "num_images=3"])
    assert capsys.readouterr().out.startswith(f"{CSV_NAME}: wrote 3 records")
    truth = write(tmp_path / "raw", seed=0, num_images=3)

    assert builder.builder_class(CSV_NAME).__name__ == "CsvBoxes"
    loaded = load_person_search_dataset(CSV_NAME, tmp_path / "raw", split="train", cache_dir=tmp_path / "cache")
    rows = loaded.remove_columns("image").to_list()
    assert record_differences(truth["records"], rows) == []

    convert.main([CSV_NAME, str(tmp_path / "raw"), str(tmp_path / "parquet"), "--cache-dir", str(tmp_path / "c2")])
    assert (tmp_path / "parquet" / "data" / "train-00000-of-00001.parquet").is_file()

    sources = [{"name": CSV_NAME}, {"name": "msmt17"}, {"name": "ecp"}]
    assert domain_counts({"data": {"sources": sources}}) == {"detection": 2, "reid": 1}


def test_synthetic_sizes_are_checked_against_any_writer_signature(tmp_path, monkeypatch):
    writers = {
        "writer_keyword_only": "def write(out_dir, *, seed=0, num_images=2):\n    return {}\n",
        "writer_positional": "def write(out_dir, seed=0, num_images=2, width=64):\n    return {}\n",
        "writer_any_keyword": "def write(out_dir, seed=0, **sizes):\n    return {}\n",
    }
    for module, source in writers.items():
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = formats.get_spec("msmt17")

    def spec(module):
        return dataclasses.replace(base, synthetic_writer=module)

    assert spec("writer_keyword_only").synthetic_size_names() == ["num_images"]
    assert spec("writer_positional").synthetic_size_names() == ["num_images", "width"]
    assert spec("writer_any_keyword").synthetic_size_names() is None
    spec("writer_positional").check_synthetic_sizes({"num_images": 3, "width": 8})
    spec("writer_any_keyword").check_synthetic_sizes({"anything": 1})
    with pytest.raises(ValueError, match=r"msmt17: unknown synthetic size\(s\) \['height'\]; its writer takes"):
        spec("writer_keyword_only").check_synthetic_sizes({"num_images": 3, "height": 8})
