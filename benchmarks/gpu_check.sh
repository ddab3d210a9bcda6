#!/usr/bin/env bash
# Prepared GPU check (docs/benchmarks.md): run from the repository root on a CUDA machine.
#   1. ResNet-20 on synthetic CIFAR-shaped data: images/s with and without recording, and
#      the recording overhead ratio (benchmarks/gpu_check.py);
#   2. one short causal-pruning round end to end through the CLI with the GPU config of
#      Table 1 (data on the GPU, bf16, channels_last) on synthetic CIFAR-10 pickles;
#   3. with 2 or more GPUs only: the same round as 2 processes (DDP, nccl), replicated and
#      with column-sharded recording, each compared with step 2's masks (docs/distributed.md).
# Usage: bash benchmarks/gpu_check.sh [python]   (default: .venv/bin/python, else python3)
# GPU_CHECK_DEVICE=cpu runs the same steps on a CPU (shorter), to test this script.
set -euo pipefail
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  STEPS=300; N=10000; DEV_SET=auto
else
  STEPS=10; N=600; DEV_SET=cpu
fi
"$PY" -c "import torch, causalprune; print('torch', torch.__version__, '| causalprune', causalprune.__version__)"

echo "== 1. throughput with and without recording"
"$PY" benchmarks/gpu_check.py --device "$DEVICE" --steps "$STEPS"

echo "== 2. one causal-pruning round end to end (synthetic CIFAR-10, $N training images)"
"$PY" - "$WORK/data" "$N" <<'PY'
import pickle, sys
from pathlib import Path
import numpy as np
folder = Path(sys.argv[1]) / "cifar-10-batches-py"
folder.mkdir(parents=True)
n = int(sys.argv[2]) // 5
rng = np.random.default_rng(0)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    labels = rng.integers(0, 10, n)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    data[:, :1024] = (labels * 25)[:, None]  # a learnable signal: the red channel encodes the label
    with open(folder / name, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels.tolist()}, f)
PY
T0=$(date +%s.%N)
"$PY" -m causalprune.cli run configs/paper/resnet20-cifar10-oneshot.yaml --out "$WORK/run" \
  --set data.root="$WORK/data" --set train.device=$DEV_SET \
  --set prune.n_pre=2 --set prune.n_prune=1 --set prune.n_post=2 --set causal.probe_size=256
T1=$(date +%s.%N)
"$PY" - "$WORK/run" "$T0" "$T1" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
s = json.loads((run / "summary.json").read_text())
levels = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"level"' in l]
print(json.dumps({"device": s["device"], "sparsity_actual": round(s["sparsity_actual"], 4),
                  "dense_test_accuracy": s["dense"]["test_accuracy"], "pruned_test_accuracy": s["pruned"]["test_accuracy"],
                  "recorded_steps": [l.get("T") for l in levels if l.get("event") == "level"],
                  "timing_s": s["timing"], "wall_s": round(float(sys.argv[3]) - float(sys.argv[2]), 1)}))
PY
NGPU=0
if [ "$DEVICE" = cuda ]; then NGPU=$(nvidia-smi -L 2>/dev/null | wc -l || echo 0); fi
if [ "$NGPU" -ge 2 ]; then
  for SHARD in false true; do
    echo "== 3. two processes (DDP, nccl), causal.shard_trajectory=$SHARD, against one process"
    T0=$(date +%s.%N)
    "$PY" -m causalprune run configs/paper/resnet20-cifar10-oneshot.yaml --out "$WORK/run2-$SHARD" --nproc 2 \
      --set data.root="$WORK/data" --set train.device=$DEV_SET --set causal.shard_trajectory=$SHARD \
      --set prune.n_pre=2 --set prune.n_prune=1 --set prune.n_post=2 --set causal.probe_size=256
    T1=$(date +%s.%N)
    "$PY" - "$WORK/run" "$WORK/run2-$SHARD" "$T0" "$T1" <<'PY'
import json, sys
from pathlib import Path
from causalprune import Mask
one, two = Path(sys.argv[1]), Path(sys.argv[2])
a, b = Mask.load(one / "level_1" / "mask.pt"), Mask.load(two / "level_1" / "mask.pt")
agree = sum(int((a[n] == b[n]).sum()) for n in a) / a.numel()
levels = [json.loads(l) for l in (two / "metrics.jsonl").read_text().splitlines() if '"event": "level"' in l]
s = json.loads((two / "summary.json").read_text())
print(json.dumps({"world_size": s["world_size"], "mask_agreement_with_one_process": agree,
                  "columns_per_rank": levels[0].get("columns_here"), "columns": levels[0].get("d"),
                  "pruned_test_accuracy": s["pruned"]["test_accuracy"], "timing_s": s["timing"],
                  "wall_s": round(float(sys.argv[4]) - float(sys.argv[3]), 1)}))
PY
  done
else
  echo "== 3. skipped: fewer than 2 GPUs"
fi
echo "gpu_check: done"
