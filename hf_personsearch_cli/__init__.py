"""``hf-personsearch``: the command line of the toolkit, one subcommand per job.

Subcommands live in a registry so that other modules add theirs without touching the parser code::

    from hf_personsearch_cli import register_subcommand

    def _convert_arguments(parser):
        parser.add_argument("raw_dir")

    @register_subcommand("convert", "Convert a raw dataset to Parquet", _convert_arguments)
    def convert(args) -> int:
        ...
        return 0

A subcommand's function receives the parsed ``argparse.Namespace`` and returns the exit status. Heavy imports
(torch models, transformers pipelines) happen inside the functions, so ``hf-personsearch --help`` is quick.

Why a package of its own beside ``hf_personsearch``: importing ``hf_personsearch`` registers the models with
transformers' Auto classes, which imports torch and transformers (seconds); Python runs a package's
``__init__`` before any of its modules, so a CLI inside it could never answer ``--help`` without that cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Subcommand:
    """A registered subcommand: its name, one-line help, argument setup and the function that runs it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register ``run(args) -> int`` as ``hf-personsearch NAME``; a second NAME is an error."""

    def decorator(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in SUBCOMMANDS:
            raise ValueError(f"hf-personsearch subcommand {name!r} is already registered")
        SUBCOMMANDS[name] = Subcommand(name, help, add_arguments, run)
        return run

    return decorator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-personsearch", description="Hybrid pre-trained person search toolkit.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for subcommand in SUBCOMMANDS.values():
        sub = subparsers.add_parser(subcommand.name, help=subcommand.help, description=subcommand.help)
        subcommand.add_arguments(sub)
        sub.set_defaults(_run=subcommand.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the subcommand. User errors (bad files, boxes, indexes) print one
    ``error: ...`` line and exit with status 2 instead of a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------- shared helpers
def _parse_box(text: str) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected x1,y1,x2,y2 (four numbers separated by commas)")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def _check_device(device: str | None) -> None:
    """A ``--device`` this machine has, or one clear error before the model loads (not a CUDA traceback later)."""
    import torch

    if device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device {device!r}: not a torch device ({error})") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: no CUDA GPU is available on this machine (use --device cpu)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device!r}: MPS is not available on this machine (use --device cpu)")


def _check_output_file(path: str | None, flag: str, picture: bool = False) -> None:
    """An output file whose folder exists (and, for a picture, whose suffix PIL writes), checked before any work."""
    if path is None:
        return
    from PIL import Image

    if not Path(path).parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {Path(path).parent} does not exist")
    if picture and Path(path).suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{flag} {path}: unknown picture format {Path(path).suffix!r} (use .png or .jpg)")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="saved model folder (fine-tuned or pre-training checkpoint) or Hub id"
    )
    parser.add_argument("--device", default=None, help="torch device (default: the first GPU if any, else cpu)")
    parser.add_argument("--min-size", type=int, default=None, help="override the image processor's min_size")
    parser.add_argument("--max-size", type=int, default=None, help="override the image processor's max_size")
    parser.add_argument("--threshold", type=float, default=0.5, help="gallery detection score threshold (0.5)")
    parser.add_argument("--batch-size", type=_positive_int, default=4, help="gallery images per forward pass (4)")


def _add_gallery_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--gallery", required=required, help="folder of gallery images")
    parser.add_argument("--recursive", action="store_true", help="also search the gallery folder's subfolders")


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _load_model(name_or_path: str):
    """The search model of a saved folder or Hub id and notes for the user (``hub.load_search_model``); what
    cannot be loaded is one clear error line naming ``--model``, not a traceback."""
    from hf_personsearch.hub import load_search_model

    try:
        return load_search_model(name_or_path)
    except ValueError as error:
        raise ValueError(f"--model {error}") from error


def _pipeline(args):
    """The search pipeline of ``--model``, with one-line notes on stderr about what is being searched with."""
    import torch
    from transformers import AutoImageProcessor, pipeline

    from hf_personsearch import PersonSearchImageProcessor
    from hf_personsearch import pipelines as _  # noqa: F401  (registers the "person-search" task)
    from hf_personsearch.hub.model_card import read_training_record, trained_on_synthetic_data

    _check_device(args.device)
    model, notes = _load_model(args.model)
    overrides = {key: value for key, value in (("min_size", args.min_size), ("max_size", args.max_size)) if value}
    try:
        processor = AutoImageProcessor.from_pretrained(args.model, **overrides)
    except OSError:
        processor = PersonSearchImageProcessor(**overrides)
        notes.append(
            f"{args.model} has no saved image processor: using the default one "
            f"(min_size {processor.min_size}, max_size {processor.max_size})"
        )
    if Path(args.model).is_dir() and trained_on_synthetic_data(read_training_record(args.model)):
        notes.append(
            f"{args.model} was trained on synthetic images only (see its model card): it demonstrates the toolkit, "
            "its matches on real photos are not meaningful"
        )
    for note in notes:
        _note(note)
    device = args.device if args.device is not None else (0 if torch.cuda.is_available() else -1)
    return pipeline("person-search", model=model, image_processor=processor, device=device)


def _report_skipped(index) -> None:
    if index.skipped:
        _note(
            f"{len(index.skipped)} gallery file(s) could not be read and were skipped: "
            + ", ".join(item["image"] for item in index.skipped)
        )


# ---------------------------------------------------------------------- card
def _card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", help="saved model folder (config.json, optional eval_results.json, training_info.json)"
    )
    parser.add_argument(
        "--kind",
        choices=("pretrained", "finetuned"),
        default=None,
        help="default: training_info's kind, else pretrained for a pre-training checkpoint, else finetuned",
    )
    parser.add_argument("--repo-id", default=None, help="Hub id shown in the usage snippet (default: the folder name)")
    parser.add_argument("--license", default="apache-2.0", help="licence of the weights (apache-2.0)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing README.md")


@register_subcommand("card", "Render or refresh the model card (README.md) of a saved model folder", _card_arguments)
def card_command(args: argparse.Namespace) -> int:
    from hf_personsearch.hub.model_card import refresh_model_card

    path = refresh_model_card(
        args.path, kind=args.kind, repo_id=args.repo_id, license=args.license, overwrite=args.force
    )
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------- export-backbone
def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="saved model folder or Hub id (fine-tuned or pre-trained)")
    parser.add_argument("--format", choices=("torchvision", "timm"), default="torchvision", help="key layout")
    parser.add_argument("--out", required=True, help="output file (.pth for torchvision, .safetensors for timm)")
    parser.add_argument(
        "--architecture", default=None, help="torchvision model name when it differs from the config's"
    )


@register_subcommand(
    "export-backbone", "Export the backbone weights for torchvision/timm-based code", _export_arguments
)
def export_backbone_command(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModel

    import hf_personsearch  # noqa: F401
    from hf_personsearch.hub.export import TORCHVISION_LOAD_LINE, export_backbone

    model = AutoModel.from_pretrained(args.model, dtype=torch.float32)
    path = export_backbone(model, args.out, format=args.format, architecture=args.architecture)
    print(f"wrote {path} ({args.format} layout)")
    if args.format == "torchvision":
        architecture = args.architecture or model.config.backbone.split(".")[0]
        print("load it (strict) with:", TORCHVISION_LOAD_LINE.format(architecture=architecture, path=path))
    return 0


# ---------------------------------------------------------------------- index
def _index_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    _add_gallery_arguments(parser, required=True)
    parser.add_argument("--out", required=True, help="folder to write the gallery index to")
    parser.add_argument(
        "--update",
        action="store_true",
        help="reuse the index already in --out (same model and settings): embed only new and changed files, "
        "drop files gone from the gallery",
    )


@register_subcommand("index", "Embed a gallery folder once and save the index", _index_arguments)
def index_command(args: argparse.Namespace) -> int:
    from hf_personsearch.pipelines import GalleryIndex
    from hf_personsearch.pipelines.gallery_index import METADATA_FILE

    search = _pipeline(args)
    previous = None
    if args.update:
        if (Path(args.out) / METADATA_FILE).is_file():
            previous = GalleryIndex.load(args.out)
            if previous.images and not previous.image_files:
                print(
                    f"note: the index in {args.out} predates updates (no file records): every image is embedded",
                    file=sys.stderr,
                )
        else:
            print(f"note: no gallery index in {args.out} yet: every image is embedded", file=sys.stderr)
    index = search.build_index(
        args.gallery, threshold=args.threshold, batch_size=args.batch_size, recursive=args.recursive, update=previous
    )
    index.save(args.out)
    _report_skipped(index)
    line = f"indexed {len(index)} persons in {len(index.images)} images -> {args.out}"
    if previous is not None:
        kept, gone = len(previous.same_files(index)), len(set(previous.images) - set(index.images))
        line += f" ({kept} taken from the index, {len(index.images) - kept} embedded, {gone} gone from the gallery)"
    print(line)
    return 0


# ---------------------------------------------------------------------- search
def _search_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--query", required=True, help="query image")
    parser.add_argument("--box", required=True, type=_parse_box, help="query person box x1,y1,x2,y2 in pixels")
    _add_gallery_arguments(parser, required=False)
    parser.add_argument("--index", help="gallery index folder written by `hf-personsearch index` (or --gallery)")
    parser.add_argument("--top-k", type=_positive_int, default=10, help="matches to show (10)")
    parser.add_argument("--best-per-image", action="store_true", help="one match per gallery image (its best person)")
    parser.add_argument("--out", default=None, help="write the picture of the query and the matches here (.png)")
    parser.add_argument(
        "--show-detections",
        action="store_true",
        help="picture: whole gallery images with every detection and its score (default: a window on the match)",
    )
    parser.add_argument("--columns", type=_positive_int, default=5, help="picture: tiles per row (5)")
    parser.add_argument("--json", default=None, help="write the ranked matches as JSON here")
    parser.add_argument(
        "--backend",
        choices=("torch", "faiss"),
        default="torch",
        help="exact search in torch, or with FAISS (needs faiss)",
    )


def _why_no_match(index, threshold: float) -> str:
    """Why a search found nothing: no gallery detection reaches the threshold (the highest one, if the index
    kept weaker detections, tells how far off it is)."""
    why = f"no match: no gallery person in the {len(index.images)} gallery images has a detection score >= {threshold}"
    weaker = index.scores[index.scores < threshold]
    if len(weaker):
        why += f" (the highest is {float(weaker.max()):.3f})"
    return why + "; lower --threshold to see weaker detections"


@register_subcommand(
    "search", "Find the query person in a gallery; print a ranked table, draw a picture", _search_arguments
)
def search_command(args: argparse.Namespace) -> int:
    from hf_personsearch.pipelines import GalleryIndex, format_matches_table, image_from_source, render_search_result

    if (args.gallery is None) == (args.index is None):
        raise ValueError("give one of --gallery (a folder of images) and --index (a folder written by `index`)")
    _check_output_file(args.json, "--json")
    _check_output_file(args.out, "--out", picture=True)
    search = _pipeline(args)
    if args.index is not None:
        index = GalleryIndex.load(args.index)
    else:
        index = search.build_index(
            args.gallery, threshold=args.threshold, batch_size=args.batch_size, recursive=args.recursive
        )
    _report_skipped(index)
    matches = search.search(
        args.query,
        args.box,
        index,
        top_k=args.top_k,
        backend=args.backend,
        threshold=args.threshold,
        best_per_image=args.best_per_image,
    )
    for match in matches:
        index.image_file(match["image_index"])  # a gallery moved since indexing: say so before the table
    if not matches:
        print(_why_no_match(index, args.threshold))
    else:
        print(format_matches_table(matches))
    if args.json:
        Path(args.json).write_text(json.dumps(matches, indent=2))
    if args.out and matches:

        def detections(match: dict) -> list[dict]:
            rows = (index.image_index == match["image_index"]) & (index.scores >= args.threshold)
            return [
                {"box": box.tolist(), "score": float(score)}
                for box, score in zip(index.boxes[rows], index.scores[rows])
            ]

        picture = render_search_result(
            image_from_source(args.query, "query image"),
            args.box,
            matches,
            lambda match: image_from_source(str(index.image_file(match["image_index"])), "gallery image"),
            columns=args.columns,
            detections=detections if args.show_detections else None,
        )
        picture.save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
