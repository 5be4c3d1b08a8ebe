"""Evaluate a person search checkpoint on a target dataset: table, JSON and a picture of ranked matches.

Usage::

    python examples/run_eval.py --model org/prtps-r50-prw --dataset prw --data_dir /data/PRW-v16.04.20
    accelerate launch examples/run_eval.py --model outputs/finetune_prw --dataset cuhk_sysu \\
        --data_dir /data/cuhk_sysu --gallery_size 1000

``--model`` is a saved model folder or a hub id (PersonSearchModel, AlignPSModel, or a pre-training checkpoint: its
person search part is evaluated). Protocol switches: ``--gallery_size`` (CUHK-SYSU TestG{N} or "full";
default TestG100), ``--cross_camera`` (PRW / PoseTrack21), ``--det_thresh``. With no ``--data_dir`` the
synthetic generator writes the dataset's raw format under ``<output_dir>/data`` first.

Writes to ``--output_dir``: ``eval_results.json`` (summary, model card form), ``per_query.json`` (AP,
recall and ranked top-k of every query) and ``search_examples.png``: one row per shown query, the query
crop then its top-k gallery detections, each framed green (a true positive) or red (wrong). Under
``accelerate launch`` with several processes only the main process evaluates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image, ImageDraw

from hf_personsearch import PersonSearchImageProcessor
from hf_personsearch.data.formats import target_names
from hf_personsearch.data.search_dataset import target_dataset
from hf_personsearch.evaluation.model_inference import evaluate_on_target, resolve_gallery_size
from hf_personsearch.hub import load_search_model
from hf_personsearch.image_loading import load_image
from hf_personsearch.pipelines.visualization import BACKGROUND, render_search_result
from hf_personsearch.training.config import exit_status

logger = logging.getLogger("run_eval")

CORRECT_COLOUR = (30, 230, 30)
WRONG_COLOUR = (230, 0, 0)
"""Frame colours of a true positive / a wrong match (the correct green differs from the visualisation's box
green, so the two marks can be told apart)."""
FRAME_FRACTION = 0.04
"""Width of the correct/wrong frame around a gallery tile, as a fraction of the image's shorter side: 4%
stays visible after the tile is scaled to 256 px height without covering the persons."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class UsageError(ValueError):
    """Bad command-line input, reported before anything is computed."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder or hub id")
    parser.add_argument("--dataset", required=True, help=f"one of {target_names()}")
    parser.add_argument("--data_dir", default=None, help="raw dataset folder (default: generate synthetic data)")
    parser.add_argument("--output_dir", default="outputs/eval", help="where JSON and picture go")
    parser.add_argument("--gallery_size", default=None, help="CUHK-SYSU TestG{N} or 'full' (default: 100)")
    parser.add_argument("--cross_camera", action="store_true", help="gallery keeps only other cameras")
    parser.add_argument("--det_thresh", type=float, default=0.5, help="detection score threshold (protocol: 0.5)")
    parser.add_argument("--batch_size", type=int, default=2, help="images per forward (2: full-size scenes)")
    parser.add_argument("--min_size", type=int, default=None, help="override the saved processor's shortest side")
    parser.add_argument("--max_size", type=int, default=None, help="override the saved processor's longest side")
    parser.add_argument("--num_shown_queries", type=int, default=4, help="queries in the picture (4 rows)")
    parser.add_argument("--top_k_shown", type=int, default=5, help="matches per query in the picture (top-5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data when no --data_dir")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even where a GPU exists")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="run the model under bf16 autocast: about 0.5x the time of float32 for ResNet-50 on a CPU with "
        "AVX512-BF16, but the results move (synthetic PRW: top-1 -1.3, detection AP -0.2 points), so off by default",
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every problem found without computing: raise :class:`UsageError` naming the argument."""
    try:
        target_dataset(args.dataset)
        if args.gallery_size not in (None, "full"):
            if not str(args.gallery_size).isdigit():
                raise ValueError(f"--gallery_size must be a positive integer or 'full', got {args.gallery_size!r}")
            args.gallery_size = int(args.gallery_size)
        resolve_gallery_size(args.dataset, args.gallery_size)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data_dir {args.data_dir!r} is not a folder (the raw {args.dataset} dataset)")
    model = Path(args.model)
    if model.exists() or not HUB_ID.match(args.model):
        if not (model / "config.json").is_file():
            raise UsageError(f"--model {args.model!r} is neither a saved model folder (no config.json) nor a hub id")
    if args.batch_size < 1 or args.num_shown_queries < 0 or args.top_k_shown < 1:
        raise UsageError("--batch_size and --top_k_shown must be >= 1, --num_shown_queries >= 0")
    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ".write_probe").write_text("ok")
        (output_dir / ".write_probe").unlink()
    except OSError as error:
        raise UsageError(f"--output_dir {args.output_dir!r} is not writable ({error})") from error


def load_model(name: str, min_size: int | None, max_size: int | None):
    """The model (either family, float32, eval mode) and its image processor (the saved one, else the 900/1500
    default)."""
    try:
        model, notes = load_search_model(name)
    except ValueError as error:
        raise UsageError(f"--model {error}") from error
    for note in notes:
        logger.info(note)
    try:
        processor = PersonSearchImageProcessor.from_pretrained(name)
    except OSError:
        logger.warning("%s has no image processor: using PersonSearchImageProcessor() (900/1500)", name)
        processor = PersonSearchImageProcessor()
    if min_size is not None or max_size is not None:
        processor = PersonSearchImageProcessor(
            min_size=min_size or processor.min_size,
            max_size=max_size or processor.max_size,
            image_mean=processor.image_mean,
            image_std=processor.image_std,
        )
    return model, processor


def framed(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """``image`` with a frame of ``colour`` drawn along its border (the correct/wrong mark)."""
    image = image.convert("RGB")
    width = max(2, round(FRAME_FRACTION * min(image.size)))
    ImageDraw.Draw(image).rectangle([0, 0, image.width - 1, image.height - 1], outline=colour, width=width)
    return image


def search_picture(per_query: list[dict], inputs, num_queries: int, top_k: int) -> Image.Image:
    """Rows of :func:`render_search_result` (query crop, top-k matches), gallery tiles framed green/red."""
    position = {item["image_id"]: index for index, item in enumerate(inputs.gallery)}

    def open_image(image_id: str) -> Image.Image:
        return load_image(inputs.images[image_id], image_id)

    def load(match: dict) -> Image.Image:
        return framed(open_image(match["image_id"]), CORRECT_COLOUR if match["correct"] else WRONG_COLOUR)

    rows = []
    for entry in per_query[:num_queries]:
        matches = []
        for rank, match in enumerate(entry["ranked"][:top_k], start=1):
            found = inputs.detections[position[match["image_id"]]]
            distance = np.abs(found["boxes"] - np.asarray(match["box"], np.float32)).sum(axis=1)
            score = float(found["scores"][int(np.argmin(distance))])
            matches.append({**match, "image": match["image_id"], "rank": rank, "score": score})
        rows.append(render_search_result(open_image(entry["image_id"]), entry["box"], matches, load))
    if not rows:
        raise ValueError("no query to show (the protocol evaluated none)")
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), BACKGROUND)
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height
    return canvas


def main(argv: list[str] | None = None) -> dict:
    """Evaluate; returns the summary written to eval_results.json."""
    args = parse_args(argv)
    check_args(args)
    accelerator = Accelerator(cpu=args.cpu)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return {}
    output_dir = Path(args.output_dir)
    data_dir = args.data_dir
    if data_dir is None:
        from hf_personsearch.data.synthetic import generate

        data_dir = str(output_dir / "data" / args.dataset)
        if not Path(data_dir).is_dir() or not any(Path(data_dir).iterdir()):
            generate(args.dataset, data_dir, seed=args.seed)
    model, processor = load_model(args.model, args.min_size, args.max_size)
    model.to(accelerator.device)
    precision = (
        torch.autocast(accelerator.device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    )
    with precision:
        summary, inputs = evaluate_on_target(
            model,
            processor,
            args.dataset,
            data_dir,
            gallery_size=args.gallery_size,
            cross_camera=args.cross_camera,
            det_thresh=args.det_thresh,
            batch_size=args.batch_size,
        )
    search, detection = summary.pop("search"), summary.pop("detection")
    summary["model"] = args.model
    print(search.to_table())
    print(detection.to_table())
    (output_dir / "eval_results.json").write_text(json.dumps([summary], indent=2))
    (output_dir / "per_query.json").write_text(json.dumps(search.get("per_query", []), indent=2))
    if args.num_shown_queries and search.get("per_query"):
        picture = search_picture(search["per_query"], inputs, args.num_shown_queries, args.top_k_shown)
        picture.save(output_dir / "search_examples.png")
        shown = min(args.num_shown_queries, len(search["per_query"]))
        print(f"picture of {shown} queries: {output_dir / 'search_examples.png'}")
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    try:
        sys.exit(exit_status(main, "run_eval"))
    except UsageError as error:
        sys.exit(f"error: {error}")
