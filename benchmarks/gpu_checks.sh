#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (a few minutes on one H100/H200-class GPU):
#
#     bash benchmarks/gpu_checks.sh [LOG_DIR]   # PYTHON=... chooses the interpreter (default python3)
#
# 1. the test suite's CUDA cases (planned re-ID views painted on the batch's device);
# 2. benchmarks/bench_model.py --cuda-only: ResNet-50, 5 images of 900 x 1500, bf16 autocast and fp32: train step
#    and inference images/s and peak GPU memory; with SEQNET_DIR=<a checkout of SeqNet's code> (and yacs
#    installed), SeqNet's beside them;
# 3. benchmarks/bench_dataloader.py --device cuda on the paper's five-dataset mix, re-ID canvases painted in the
#    step (the GPU recipes) and in the workers: loader rates, the step's parts on the GPU (the painting's cost is
#    the difference of the two "augmentation step" shares) and the workers per GPU the recipe needs;
# 4. benchmarks/bench_batch_shapes.py: what new batch shapes cost the step, unpadded against data.size_divisor 128;
# 5. examples/run_pretrain.py: the paper's ResNet-50 recipe (examples/configs/pretrain_r50.yaml: bf16, SGD,
#    canvases painted in the step, 4 workers) on real-size synthetic data (no data folder, random init: nothing is
#    downloaded), 60 steps with a checkpoint at 30, then the export of the downstream model.
#
# Each part's output goes to LOG_DIR/<part>.log as well as to the terminal; the script goes on after a failed part
# and exits non-zero if any failed. Nothing here runs in CI (CI has no GPU); the test suite never needs one.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOG_DIR=${1:-gpu_checks_logs}
mkdir -p "$LOG_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=()

part() {  # part NAME COMMAND...: run, log, remember a failure
    local name=$1
    shift
    echo "=== $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - start)) s"
    [ "$status" -eq 0 ] || failed+=("$name")
}

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to $PYTHON: nothing to check here" >&2
    exit 2
fi
nvidia-smi -L
"$PYTHON" -c "import sys, torch, torchvision, timm, transformers, accelerate; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__)"

part tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/data/test_augmentation.py \
    tests/models/test_map_first_box_head.py -k "device"
part bench_model "$PYTHON" benchmarks/bench_model.py --cuda-only --repeats 5 ${SEQNET_DIR:+--seqnet "$SEQNET_DIR"}
part dataloader_step "$PYTHON" benchmarks/bench_dataloader.py --device cuda --workers 0 2 4 --batches 16 \
    --model_steps 12
workers_config="$(mktemp -d)/pretrain_r50_canvas_in_workers.yaml"
sed 's/^  canvas_in_step: true .*/  canvas_in_step: false/' examples/configs/pretrain_r50.yaml >"$workers_config"
grep -q "^  canvas_in_step: false" "$workers_config" || { echo "could not write $workers_config" >&2; exit 1; }
part dataloader_workers "$PYTHON" benchmarks/bench_dataloader.py --device cuda --workers 0 2 4 --batches 16 \
    --model_steps 12 --config "$workers_config"
part batch_shapes "$PYTHON" benchmarks/bench_batch_shapes.py --steps 40

run_dir=$(mktemp -d)
part pretrain_r50 "$PYTHON" examples/run_pretrain.py --config examples/configs/pretrain_r50.yaml \
    --output_dir "$run_dir" --max_steps 60 \
    'data.sources=[{name: crowdhuman}, {name: ecp}, {name: msmt17}, {name: cuhk03}, {name: luperson}]' \
    'data.synthetic_sizes={crowdhuman: {num_train: 24, num_val: 1, width: 1200, height: 800},
        ecp: {num_per_subset: 6, width: 1920, height: 1024}, msmt17: {num_train_ids: 12, num_test_ids: 2},
        luperson: {num_crops: 40}}' \
    model_init.backbone_weights=null schedule.warmup_steps=10 checkpointing.every=30 training.log_every=10
part pretrain_r50_result "$PYTHON" - "$run_dir" 60 <<'EOF'
import json
import math
import sys
from pathlib import Path

run = Path(sys.argv[1])
rows = [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]
skipped = sum(row["skipped"] for row in rows)
losses = [row["loss"] for row in rows if not row["skipped"]]
print(f"{len(rows)} steps logged, {skipped} skipped (non-finite), loss first 10 "
      f"{sum(losses[:10]) / len(losses[:10]):.3f} -> last 10 {sum(losses[-10:]) / len(losses[-10:]):.3f}")
print("checkpoints:", sorted(path.name for path in run.glob("checkpoint-*")))
print("exported:", sorted(path.name for path in (run / "person_search_model").iterdir()))
assert len(rows) == int(sys.argv[2]) and all(math.isfinite(loss) for loss in losses), "a step failed or was not finite"
EOF
rm -rf "$run_dir"

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
