"""The examples under examples/ run as shipped and reach their sparsity (each in seconds on a CPU)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def _run(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_the_plain_loop_example_is_short_and_prunes_90_percent():
    assert len((EXAMPLES / "plain_loop.py").read_text().splitlines()) <= 30
    out = _run("plain_loop.py")
    m = re.search(r"sparsity ([\d.]+), test accuracy ([\d.]+), rounds (\d+)", out)
    assert m and float(m[1]) == 0.9 and int(m[3]) == 4 and float(m[2]) > 0.5, out


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="lightning is not installed")
def test_the_lightning_example_prunes_90_percent():
    out = _run("lightning_digits.py")
    m = re.search(r"sparsity ([\d.]+), test accuracy ([\d.]+)", out)
    assert m and float(m[1]) == 0.9 and float(m[2]) > 0.5, out


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_the_hugging_face_example_prunes_70_percent_of_the_linear_weights(tmp_path):
    out = _run("huggingface_gpt2.py", str(tmp_path / "out"))
    m = re.search(r"Linear weights pruned: ([\d.]+); eval loss ([\d.]+)", out)
    assert m and float(m[1]) == 0.7, out
