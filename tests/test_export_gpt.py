"""Export of a finished `gpt` / `pysrc` run: int64 token ids in, every format, pt2 loaded without the package."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from causalprune import export
from causalprune.config import config_from_dict
from causalprune.data.text import VOCAB_SIZE
from causalprune.experiment import run_experiment

from .test_gpt_pysrc import TINY_GPT

needs_onnx = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
                                reason="the onnx extra is not installed (make setup installs it)")  # fmt: skip
BLOCK = 16  # TINY_GPT's model.block_size: the exported input is (B, 16) token ids, not the data set's default 64


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_gpt") / "g"
    run_experiment(config_from_dict(TINY_GPT, ["data.max_chars=20000"]), d, quiet=True)
    return d


def outputs_without_the_package(pt2, x, tmp_path):
    """Return what the exported program `pt2` computes on `x`, run in a Python where causalprune cannot be imported."""
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys; sys.modules['causalprune'] = None\n"  # importing the package would fail
            "import torch\n"
            f"m = torch.export.load({str(pt2)!r}).module()\n"
            f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, capture_output=True)
    return torch.load(tmp_path / "y.pt")


def _ids(batch, seed=3):
    return torch.randint(0, VOCAB_SIZE, (batch, BLOCK), generator=torch.Generator().manual_seed(seed))


def test_the_run_io_of_a_gpt_run_is_int64_token_ids_of_its_block_size(gpt_run):
    _, shape, _, cfg = export.load_finished_model(gpt_run)
    assert shape == (BLOCK,)
    io = export.run_io(cfg)
    assert io.input_dtype == torch.int64 and io.input_shape == (BLOCK,)
    assert 0 <= int(io.example.min()) and int(io.example.max()) < VOCAB_SIZE
    assert len({tuple(r) for r in io.example.tolist()}) == io.example.shape[0]  # distinct rows


def test_pt2_of_a_gpt_run_has_a_dynamic_batch_and_loads_without_the_package(gpt_run, tmp_path):
    out = export.export_run(gpt_run, "pt2", tmp_path / "g.pt2")
    side = json.loads((tmp_path / "g.pt2.json").read_text())
    assert side["dynamic_batch"] is True and "static_batch_reason" not in side
    assert side["input_shape"] == [BLOCK] and side["input_dtype"] == "int64" and side["outputs"] == VOCAB_SIZE
    x = _ids(5)
    model, _, _, _ = export.load_finished_model(gpt_run)
    with torch.no_grad():
        torch.testing.assert_close(outputs_without_the_package(out["file"], x, tmp_path), model(x))


@needs_onnx
def test_onnx_of_a_gpt_run_runs_in_onnxruntime_on_int64_ids(gpt_run, tmp_path):
    import onnxruntime as ort

    out = export.export_run(gpt_run, "onnx", tmp_path / "g.onnx")
    assert "checked with onnxruntime (batch 3)" in out["check"] and out["dynamic_batch"] is True
    session = ort.InferenceSession(out["file"], providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(int64)"
    model, _, _, _ = export.load_finished_model(gpt_run)
    x = _ids(4)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), model(x),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip


@pytest.mark.parametrize("fmt", ["state_dict", "sparse"])
def test_the_weight_formats_of_a_gpt_run_give_back_its_weights(gpt_run, tmp_path, fmt):
    from causalprune.formats import load_sparse

    out = export.export_run(gpt_run, fmt, tmp_path / "w.pt")
    state = torch.load(out["file"], weights_only=True) if fmt == "state_dict" else load_sparse(out["file"])
    model, _, _, _ = export.load_finished_model(gpt_run)
    want = model.state_dict()
    assert set(state) == set(want) and all(torch.equal(state[k], want[k]) for k in want)
    assert out["input_dtype"] == "int64"
