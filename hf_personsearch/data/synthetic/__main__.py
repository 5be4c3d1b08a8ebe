"""``python -m hf_personsearch.data.synthetic FMT OUT [--seed N] [--size key=value ...]``."""

from __future__ import annotations

import argparse

from ..formats import dataset_names, get_spec
from . import generate


def main(argv: list[str] | None = None) -> None:
    """Write a synthetic dataset and print how many records (and queries) it holds."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_personsearch.data.synthetic",
        description="Write a small synthetic dataset in a real raw format (for tests and demos).",
    )
    parser.add_argument("fmt", choices=dataset_names())
    parser.add_argument("out", help="dataset root to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="KEY=INT",
        help="a writer size argument, e.g. --size num_train=20 (repeatable)",
    )
    args = parser.parse_args(argv)
    sizes = {}
    for item in args.size:
        key, sep, value = item.partition("=")
        if not sep or not value.lstrip("-").isdigit():
            parser.error(f"--size expects KEY=INT, got {item!r}")
        sizes[key] = int(value)
    try:
        get_spec(args.fmt).check_synthetic_sizes(sizes)
    except ValueError as error:
        parser.error(f"--size: {error}")
    truth = generate(args.fmt, args.out, seed=args.seed, **sizes)
    line = f"{args.fmt}: wrote {len(truth['records'])} records"
    if "queries" in truth:
        line += f" and {len(truth['queries'])} queries"
    print(f"{line} to {args.out}")


if __name__ == "__main__":
    main()
