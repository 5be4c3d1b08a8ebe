"""The README demo: the paper's pipeline, end to end, on synthetic data and a CPU.

    python examples/demo.py            # about 7 minutes on 2 CPU cores (measured: 419 s, 40 test queries, load ~0.8)
    python examples/demo.py --quick    # a smoke run: a few steps per stage, under a minute
    python examples/demo.py --finetune_seeds 0 1 2   # both fine-tunings with 3 seeds: mean +- std (~14 min)

Stages, each a subprocess whose progress is streamed here and saved to ``<output_dir>/<stage>.log``:

1. ``pretrain``: hybrid pre-training (``examples/run_pretrain.py``) on the five synthetic sub-task
   datasets (CrowdHuman, ECP, MSMT17, CUHK03, LUPerson, generated in their raw formats by the script),
   exported as a PersonSearchModel;
2. ``data``: the synthetic PRW target dataset (its real raw format) under ``<output_dir>/data/prw``;
3. ``finetune_pretrained``: fine-tuning on that PRW from the pre-trained model (backbone + heads);
4. ``finetune_scratch``: the same fine-tuning from random weights.

Both fine-tunings read the same PRW folder with the same config and seed, so the initialisation is the only
difference. The table printed at the end (init, mAP, top-1, detection AP and recall, wall time) is read
from each run's ``results.json``; ``<output_dir>/summary.json`` holds the same numbers, the commands, the
wall time of every stage and the load average of the machine before and after.

At this size one fine-tuning seed moves mAP by several points, so ``--finetune_seeds`` repeats stages 3
and 4 with each seed (``training.seed``; stage folders ``finetune_pretrained_seed<S>`` etc. when several
seeds are given) and the table shows the mean +- the standard deviation over the seeds; every run's
numbers are in ``summary.json`` under ``runs``. The pre-training itself runs once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parent
PRETRAIN_CONFIG = EXAMPLES / "configs" / "pretrain_demo_cpu.yaml"
FINETUNE_CONFIG = EXAMPLES / "configs" / "finetune_demo_cpu.yaml"
DEMO_MARKER = ".hf_personsearch_demo"
"""File that marks a folder as written by this demo, so a rerun may clear it (and nothing else)."""

STAGE_FOLDERS = ("pretrain", "data")
"""Sub-folders of the output folder a run writes, with every ``finetune_*`` one; a rerun clears them
(run_pretrain appends to its logs)."""

INITS = (("pre-trained", "finetune_pretrained"), ("scratch", "finetune_scratch"))
"""Table name and stage name of the two fine-tunings."""

METRICS = ("mAP", "top1", "detection_ap", "detection_recall")

QUICK_PRETRAIN = [
    "training.max_steps=3",
    "training.log_every=1",
    "data.synthetic_sizes.crowdhuman={num_train: 3, num_val: 1, width: 160, height: 128}",
    "data.synthetic_sizes.ecp={num_per_subset: 2, width: 200, height: 112}",
    "data.synthetic_sizes.msmt17={num_train_ids: 3, num_test_ids: 1, num_cameras: 2}",
    "data.synthetic_sizes.cuhk03={ids_per_pair: 1, images_per_view: 1}",
    "data.synthetic_sizes.luperson={num_crops: 4}",
]
"""``--quick`` pre-training: 3 steps on a few images per dataset (the pipeline runs, nothing is learned)."""

QUICK_TARGET_SIZES = {"num_train_frames": 4, "num_test_frames": 4, "num_train_identities": 3, "num_test_identities": 3}
"""``--quick`` synthetic PRW: 4 + 4 frames, enough for every query to have a gallery match."""

QUICK_FINETUNE = ["training.max_steps=2", "training.log_every=1"]
"""``--quick`` fine-tuning: 2 optimiser steps, then the full evaluation on the (small) test split."""

TABLE_COLUMNS = (
    ("init", "init", "{}"),
    ("mAP", "mAP", "{:.2%}"),
    ("top-1", "top1", "{:.2%}"),
    ("det AP", "detection_ap", "{:.2%}"),
    ("det recall", "detection_recall", "{:.2%}"),
    ("fine-tune s", "wall_s", "{:.0f}"),
)
"""Columns of the results table: header, key in a result row, format."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo", help="where every stage writes (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps per stage")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of each stage (default 1: the stages run one after the other, and on the shared "
        "2-core machine 80 fine-tuning steps took 27 s with 1 thread and 98 s with 2)",
    )
    parser.add_argument(
        "--finetune_seeds",
        type=int,
        nargs="+",
        default=[0],
        help="training.seed of the fine-tunings; several seeds run both fine-tunings once per seed and print the "
        "mean +- standard deviation (default: 0 only, to keep the demo at ~7 minutes)",
    )
    parser.add_argument("--pretrain_config", default=str(PRETRAIN_CONFIG), help="run_pretrain.py YAML")
    parser.add_argument("--finetune_config", default=str(FINETUNE_CONFIG), help="run_finetune.py YAML")
    args = parser.parse_args(argv)
    if len(set(args.finetune_seeds)) != len(args.finetune_seeds):
        parser.error(f"--finetune_seeds has a repeated seed: {args.finetune_seeds}")
    return args


def prepare_output_dir(output_dir: Path) -> None:
    """Create ``output_dir``, or clear the stage folders of an earlier demo run in it.

    Raises:
        SystemExit: ``output_dir`` holds files that this demo did not write (no marker file): clearing it
            could delete someone's data.
    """
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / DEMO_MARKER).is_file():
        raise SystemExit(
            f"demo: {output_dir} is not empty and was not written by the demo (no {DEMO_MARKER} file): "
            "choose another --output_dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / DEMO_MARKER).write_text("written by examples/demo.py; a rerun clears the stage folders\n")
    for name in STAGE_FOLDERS:
        shutil.rmtree(output_dir / name, ignore_errors=True)
    for folder in output_dir.glob("finetune_*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def target_sizes(finetune_config: Path, quick: bool) -> dict:
    """Writer size arguments of the synthetic target dataset: ``data.synthetic_sizes`` of the fine-tune YAML."""
    if quick:
        return dict(QUICK_TARGET_SIZES)
    config = yaml.safe_load(finetune_config.read_text()) or {}
    sizes = (config.get("data") or {}).get("synthetic_sizes") or {}
    for key, value in sizes.items():
        if not isinstance(value, int):
            raise SystemExit(f"demo: {finetune_config}: data.synthetic_sizes.{key} must be an integer, got {value!r}")
    return dict(sizes)


def build_stages(args: argparse.Namespace, output_dir: Path) -> list[tuple[str, list[str]]]:
    """``(name, command)`` of every stage, in order."""
    python, data_dir = sys.executable, output_dir / "data" / "prw"
    generate = [python, "-m", "hf_personsearch.data.synthetic", "prw", str(data_dir), "--seed", "0"]
    generate += [
        f"--size={key}={value}" for key, value in target_sizes(Path(args.finetune_config), args.quick).items()
    ]
    pretrain = [python, str(EXAMPLES / "run_pretrain.py"), "--config", args.pretrain_config]
    pretrain += ["--output_dir", str(output_dir / "pretrain"), "-o", "training.report_to=[]"]
    if args.quick:
        pretrain += [item for override in QUICK_PRETRAIN for item in ("-o", override)]
    finetune = [
        python,
        str(EXAMPLES / "run_finetune.py"),
        "--config",
        args.finetune_config,
        f"data.data_dir={data_dir}",
    ]
    finetune += QUICK_FINETUNE if args.quick else []
    exported = output_dir / "pretrain" / "person_search_model"
    init_overrides = {
        "finetune_pretrained": ["init.from=pretrained", f"init.path={exported}"],
        "finetune_scratch": ["init.from=scratch"],
    }
    stages = [("pretrain", pretrain), ("data", generate)]
    for seed in args.finetune_seeds:
        for _, stage in INITS:
            name = finetune_stage_name(stage, seed, args.finetune_seeds)
            overrides = [f"training.output_dir={output_dir / name}", f"training.seed={seed}"]
            stages.append((name, finetune + overrides + init_overrides[stage]))
    return stages


def finetune_stage_name(stage: str, seed: int, seeds: list[int]) -> str:
    """``stage`` itself for a single seed, ``<stage>_seed<seed>`` when several seeds run."""
    return stage if len(seeds) == 1 else f"{stage}_seed{seed}"


def run_stage(name: str, command: list[str], log_path: Path, threads: int) -> float:
    """Run one stage, streaming its output (tqdm's carriage returns included) here and into ``log_path``.

    Returns:
        the stage's wall time in seconds.

    Raises:
        SystemExit: the stage failed; the message names it, its exit code and its log.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never wait on network retries
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        while chunk := os.read(process.stdout.fileno(), 4096):
            log.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        returncode = process.wait()
    wall = time.perf_counter() - started
    if returncode != 0:
        raise SystemExit(f"demo: stage {name!r} failed with exit code {returncode} after {wall:.0f} s; see {log_path}")
    print(f"=== {name}: done in {wall:.1f} s", flush=True)
    return wall


def result_row(init: str, finetune_dir: Path, wall_s: float) -> dict:
    """One table row from a fine-tuning run's ``results.json`` (its final evaluation)."""
    path = finetune_dir / "results.json"
    try:
        final = json.loads(path.read_text())["final"]
        row = {key: float(final[key]) for key in ("mAP", "top1", "detection_ap", "detection_recall")}
    except (OSError, KeyError, ValueError) as error:
        raise SystemExit(f"demo: {path} has no final mAP/top1/detection_ap/detection_recall ({error!r})") from error
    return {
        "init": init,
        **row,
        "num_queries": int(final.get("num_queries", 0)),
        "step": final.get("step"),
        "wall_s": wall_s,
    }


def mean_row(init: str, runs: list[dict]) -> dict:
    """The mean of ``runs`` (rows of one init, one per seed); with several runs also ``<metric>_std``
    (population standard deviation over the seeds) and ``seeds``."""
    row = {"init": init}
    for key in (*METRICS, "wall_s"):
        values = [run[key] for run in runs]
        row[key] = sum(values) / len(values)
        if len(runs) > 1 and key in METRICS:
            row[f"{key}_std"] = (sum((value - row[key]) ** 2 for value in values) / len(values)) ** 0.5
    row["num_queries"] = runs[0]["num_queries"]
    row["step"] = runs[0]["step"]
    if len(runs) > 1:
        row["seeds"] = [run["seed"] for run in runs]
    return row


def format_table(rows: list[dict]) -> str:
    """Rows as an aligned plain-text table (metrics as percentages, times in seconds; ``+- std`` in points
    where a row has ``<metric>_std``)."""

    def cell(row: dict, key: str, fmt: str) -> str:
        text = fmt.format(row[key])
        return text + (f" +- {100 * row[key + '_std']:.1f}" if key + "_std" in row else "")

    cells = [[header for header, _, _ in TABLE_COLUMNS]]
    cells += [[cell(row, key, fmt) for _, key, fmt in TABLE_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(line, widths))
        )
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the four stages and return the summary (also written to ``<output_dir>/summary.json``)."""
    args = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    prepare_output_dir(output_dir)
    load_before = os.getloadavg()
    started = time.perf_counter()
    stages = []
    for name, command in build_stages(args, output_dir):
        wall = run_stage(name, command, output_dir / f"{name}.log", args.threads)
        stages.append({"name": name, "command": command, "wall_s": round(wall, 1)})
    walls = {stage["name"]: stage["wall_s"] for stage in stages}
    runs = []
    for seed in args.finetune_seeds:
        for init, stage in INITS:
            name = finetune_stage_name(stage, seed, args.finetune_seeds)
            runs.append({**result_row(init, output_dir / name, walls[name]), "seed": seed})
    rows = [mean_row(init, [run for run in runs if run["init"] == init]) for init, _ in INITS]
    summary = {
        "quick": args.quick,
        "threads": args.threads,
        "finetune_seeds": args.finetune_seeds,
        "results": rows,
        "runs": runs,
        "stages": stages,
        "total_wall_s": round(time.perf_counter() - started, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    seeds = f", mean +- std over fine-tuning seeds {args.finetune_seeds}" if len(args.finetune_seeds) > 1 else ""
    print(f"\nSynthetic PRW test split ({rows[0]['num_queries']} queries), search at detection score >= 0.5{seeds}:")
    print(format_table(rows))
    print(
        f"pre-training {walls['pretrain']:.0f} s, total {summary['total_wall_s']:.0f} s "
        f"(load average before {load_before[0]:.2f}); summary: {output_dir / 'summary.json'}"
    )
    return summary


if __name__ == "__main__":
    main()
