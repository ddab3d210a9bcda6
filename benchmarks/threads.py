"""Demo run time at 1 and 2 intra-op threads, on a quiet machine and beside one busy process.

Runs the built-in demo config (MNIST-1D MLP, causal, seed 0: one of the demo's 12 runs)
in a fresh subprocess per setting, with ``--set train.threads=N``, and prints one JSON
line per setting plus the ratios. "Busy" starts a pure-Python loop on one core for the
duration (the situation of a shared machine, or of `sweep --jobs 2` on 2 cores).
Run: python benchmarks/threads.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time


def _burn(stop: float) -> None:
    x = 0
    while time.time() < stop:
        x += 1


def _demo_run(threads: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "causalprune.cli", "run", "--out", out, "--set", f"train.threads={threads}"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting; the median is reported")
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results = {}
    for busy in (False, True):
        for threads in (1, 2):
            times = []
            for _ in range(a.repeats):
                burner = None
                if busy:
                    burner = mp.get_context("spawn").Process(target=_burn, args=(time.time() + 600,))
                    burner.start()
                try:
                    times.append(_demo_run(threads))
                finally:
                    if burner is not None:
                        burner.terminate()
                        burner.join()
            times.sort()
            key = f"{'busy' if busy else 'quiet'}_{threads}"
            results[key] = times[len(times) // 2]
            print(json.dumps({"setting": key, "threads": threads, "busy_process": busy, "cores": cores,
                              "seconds": [round(t, 2) for t in times]}), flush=True)  # fmt: skip
    print(json.dumps({"quiet_1_over_2": round(results["quiet_1"] / results["quiet_2"], 3),
                      "busy_1_over_2": round(results["busy_1"] / results["busy_2"], 3), "cores": cores}))  # fmt: skip


if __name__ == "__main__":
    main()
