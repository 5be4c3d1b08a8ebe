"""The README demo: does hybrid pre-training help person search? A short, paired run of the pre-training
benchmark (``benchmarks/bench_pretraining.py``) on synthetic data and a CPU.

    python examples/demo.py                  # one seed, 4 fine-tunings (see DEMO_CONDITIONS), two worker processes;
                                             # 337 s on 2 cores training under bf16 autocast (the benchmark's
                                             # default on a CPU with bf16 instructions; 391-590 s in float32), of
                                             # which the first pre-training stage (1000 steps, one core, the other
                                             # runs scratch's fine-tunings) took 193 s
    python examples/demo.py --quick          # a smoke run: tiny data, a few steps per stage
    python examples/demo.py --seeds 0 1 2    # three paired seeds: mean +- std and the difference per seed

What runs (all of it is the benchmark's, with its configs ``examples/configs/bench_*_cpu.yaml``):

1. the synthetic sub-task datasets (CrowdHuman, ECP, MSMT17, CUHK03, LUPerson) and a synthetic PRW target, written
   in their real raw formats;
2. hybrid pre-training (``examples/run_pretrain.py``): a first stage and its continuation with the full loss;
3. fine-tuning on the PRW target (``examples/run_finetune.py``) from scratch and from the pre-trained model, with
   all and with 25% of the training frames: the same data, recipe, budget and seed, so the initialisation is
   the only difference within each pair;
4. the validity gates (the pre-trained model detects on the target zero-shot; scratch_100 reaches a stable
   detection AP), the table (search mAP, top-1, detection AP, re-ID mAP on ground-truth boxes) and the paired
   differences, or, when a gate fails, the statement that no comparison is reported.

Outputs in ``<output_dir>/benchmark/``: ``summary.json``, ``table.txt``, ``pretraining_gain.png``,
``domain_tsne.png`` and every run's folder and log. The full benchmark (every ablation, several seeds):
``python benchmarks/bench_pretraining.py --seeds 0 1 2 --output_dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "bench_pretraining.py"
DEMO_MARKER = ".hf_personsearch_demo"
"""File that marks a folder as written by this demo, so a rerun may clear it (and nothing else)."""
RUN_FOLDER = "benchmark"
"""Sub-folder of the output folder the benchmark writes (it refuses a non-empty folder)."""
DEMO_CONDITIONS = ("scratch_100", "scratch_25", "full_100", "full_25")
"""The demo's fine-tunings: pre-trained vs scratch with 100% and 25% of the target's training frames (the paper's
Fig. 5 in two points); the ablations are the full benchmark's."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo", help="where everything goes (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, a few steps per stage")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="paired seeds (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default %(default)s)")
    return parser.parse_args(argv)


def prepare_output_dir(output_dir: Path) -> None:
    """Create ``output_dir`` with the demo's marker, or clear the benchmark folder of an earlier demo run in it.

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
    (output_dir / DEMO_MARKER).write_text(f"written by examples/demo.py; a rerun clears {RUN_FOLDER}/\n")
    shutil.rmtree(output_dir / RUN_FOLDER, ignore_errors=True)


def benchmark_command(args: argparse.Namespace, output_dir: Path) -> list[str]:
    command = [sys.executable, str(BENCHMARK), "--output_dir", str(output_dir / RUN_FOLDER)]
    command += ["--seeds", *map(str, args.seeds), "--conditions", *DEMO_CONDITIONS, "--workers", str(args.workers)]
    return command + (["--quick"] if args.quick else [])


def main(argv: list[str] | None = None) -> dict:
    """Run the paired comparison; return the benchmark's summary (``<output_dir>/benchmark/summary.json``)."""
    args = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    prepare_output_dir(output_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never wait on network retries
    command = benchmark_command(args, output_dir)
    print(" ".join(command), flush=True)
    completed = subprocess.run(command, env=env, cwd=ROOT)
    if completed.returncode != 0:
        raise SystemExit(f"demo: the benchmark failed with exit code {completed.returncode}; logs in {output_dir}")
    return json.loads((output_dir / RUN_FOLDER / "summary.json").read_text())


if __name__ == "__main__":
    main()
