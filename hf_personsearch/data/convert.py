"""Convert a raw dataset folder to Parquet (the Hub's layout), optionally pushing it to a PRIVATE repo.

    python -m hf_personsearch.data.convert NAME DATA_DIR OUT [--split S ...] [--strict]
        [--push-to-hub USER/REPO [--public]]

Writes ``OUT/data/<split>-00000-of-00001.parquet`` with the images embedded (bytes, not local paths),
so ``datasets.load_dataset("parquet", data_dir=OUT)`` or ``load_dataset(OUT)`` read it anywhere.
None of the supported datasets may be redistributed: push only to a private repository for your own
use (the default), and check the dataset's licence before anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import datasets
from datasets.table import embed_table_storage

from .errors import DataFormatError
from .formats import dataset_names, get_spec
from .loading import load_person_search_dataset


def convert(
    name: str,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    splits: list[str] | None = None,
    strict: bool = False,
    cache_dir: str | Path | None = None,
) -> datasets.DatasetDict:
    """Parse ``splits`` (default: all of the dataset's splits) and write one Parquet file per split.

    Returns the DatasetDict with embedded images (what is pushed by ``--push-to-hub``).
    """
    splits = list(splits or get_spec(name).splits)
    out = Path(out_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for split in splits:
        dataset = load_person_search_dataset(name, data_dir=data_dir, split=split, strict=strict, cache_dir=cache_dir)
        dataset = dataset.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
        dataset.to_parquet(str(out / f"{split}-00000-of-00001.parquet"))
        result[split] = dataset
    return datasets.DatasetDict(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_personsearch.data.convert", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=dataset_names())
    parser.add_argument("data_dir", help="your local copy of the raw dataset")
    parser.add_argument("out", help="output folder (Parquet files under OUT/data/)")
    parser.add_argument("--split", action="append", dest="splits", help="a split to convert (repeatable; default all)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad annotation or image")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also push to this Hub dataset repo")
    parser.add_argument(
        "--public", action="store_true", help="make the pushed repo public (only if the licence allows it)"
    )
    args = parser.parse_args(argv)
    if args.push_to_hub:
        from ..training.hub import check_push_possible

        try:
            check_push_possible(args.push_to_hub)
        except ValueError as error:
            parser.error(f"--push-to-hub {args.push_to_hub}: {error}")  # before the conversion, not after it
    try:
        converted = convert(
            args.name, args.data_dir, args.out, splits=args.splits, strict=args.strict, cache_dir=args.cache_dir
        )
    except (FileNotFoundError, DataFormatError) as error:  # a missing folder or file, a bad annotation (strict)
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, dataset in converted.items():
        print(
            f"{args.name}/{split}: {len(dataset)} records -> {Path(args.out) / 'data' / split}-00000-of-00001.parquet"
        )
    if args.push_to_hub:
        converted.push_to_hub(args.push_to_hub, private=not args.public)
        print(f"pushed to {args.push_to_hub} ({'public' if args.public else 'private'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
