"""The prepared GPU check runs its code path on a CPU (so it does not rot between GPU sessions)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_gpu_check_throughput_script_on_cpu():
    script = ROOT / "benchmarks" / "gpu_check.py"
    cmd = [sys.executable, str(script), "--device", "cpu", "--steps", "3", "--batch", "16",
           "--no-amp"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["plain_images_per_s"] > 0 and result["recorded_images_per_s"] > 0
    ratio = result["plain_images_per_s"] / result["recorded_images_per_s"]
    # The ratio is rounded to 4 decimals from the unrounded rates: exact to half a unit of the last digit.
    assert abs(result["overhead_ratio"] - ratio) <= 0.5e-4 + 1e-12
