"""MACs/params and CPU latency of (slim) models; `causalprune export` of a finished run.

Latency is a measurement: only its structure and positivity are checked, never its value.
"""

import importlib.util
import json
import shutil

import pytest
import torch
from torch import nn

from causalprune.cli import main
from causalprune.config import config_from_dict
from causalprune.experiment import run_experiment
from causalprune.export import export_run
from causalprune.groups import channel_groups
from causalprune.metrics import latency_ms, macs_and_params

from .conftest import TINY


def test_macs_and_params_of_a_tiny_mlp_by_hand():
    # Torch-Pruning's counter: weight MACs 4·3 + 3·2 = 18, plus one op per bias addition (3 + 2).
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    assert macs_and_params(model, (4,)) == (4 * 3 + 3 * 2 + 3 + 2, 4 * 3 + 3 + 3 * 2 + 2)  # (23, 23)
    no_bias = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    assert macs_and_params(no_bias, (4,)) == (18, 18)


def test_macs_of_a_conv_by_hand():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(3 * 4 * 4, 2, bias=False))
    macs, params = macs_and_params(model, (2, 4, 4))
    assert macs == 2 * 3 * 9 * 4 * 4 + 48 * 2
    assert params == 2 * 3 * 9 + 48 * 2


def test_removing_half_the_channels_lowers_macs_and_params():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    before = macs_and_params(model, (8,))
    cg = channel_groups(model, torch.randn(2, 8))
    keep = torch.arange(cg.G) % 2 == 0
    cg.remove_groups_(model, keep)
    after = macs_and_params(model, (8,))
    assert after[0] < before[0] and after[1] < before[1]
    assert after[0] < 0.6 * before[0]
    with torch.no_grad():
        assert model(torch.randn(3, 8)).shape == (3, 3)


def test_latency_structure():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).train()
    r = latency_ms(model, (4,), batch_sizes=(1, 8), repeats=30, warmup=2)
    assert set(r) == {"batch_1", "batch_8", "threads", "repeats"}
    assert r["batch_1"] > 0 and r["batch_8"] > 0
    assert r["threads"] == torch.get_num_threads() and r["repeats"] == 30
    assert model.training  # mode restored
    with pytest.raises(ValueError):
        latency_ms(model, (4,), batch_sizes=(0,))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "r"
    run_experiment(config_from_dict(TINY, ["prune.method=magnitude"]), d, quiet=True)
    return d


def _model_and_input(run):
    from causalprune.export import load_finished_model

    model, shape, _, _ = load_finished_model(run)
    return model, torch.randn(5, *shape)


def test_export_pt2_reloads_and_agrees(finished_run, tmp_path):
    out = tmp_path / "m.pt2"
    assert main(["export", str(finished_run), "--format", "pt2", "--out", str(out)]) == 0
    model, x = _model_and_input(finished_run)
    program = torch.export.load(out).module()
    with torch.no_grad():
        assert (program(x) - model(x)).abs().max().item() < 1e-6
    side = json.loads((tmp_path / "m.pt2.json").read_text())
    assert side["format"] == "pt2" and side["input_shape"] == [64] and side["outputs"] == 10
    summary = json.loads((finished_run / "summary.json").read_text())
    assert side["efficiency"] == summary["efficiency"]


def test_export_state_dict_loads_without_the_package_classes(finished_run, tmp_path):
    r = export_run(finished_run, "state_dict", tmp_path / "sd.pt")
    state = torch.load(tmp_path / "sd.pt", weights_only=True)
    model, x = _model_and_input(finished_run)
    assert set(state) == set(model.state_dict())
    # Rebuild with plain torch: the MLP is Flatten + Linear(64, 32) + ReLU + Linear(32, 10).
    weights = [v for k, v in state.items() if k.endswith("weight")]
    biases = [v for k, v in state.items() if k.endswith("bias")]
    h = torch.relu(x.flatten(1) @ weights[0].T + biases[0])
    with torch.no_grad():
        assert (h @ weights[1].T + biases[1] - model(x)).abs().max().item() < 1e-5
    assert r["input_shape"] == [64] and (tmp_path / "sd.pt.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed")
def test_export_onnx(finished_run, tmp_path):
    r = export_run(finished_run, "onnx", tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").stat().st_size > 0 and r["format"] == "onnx"


@pytest.mark.skipif(importlib.util.find_spec("onnx") is not None, reason="onnx is installed")
def test_export_onnx_without_onnx_is_one_line(finished_run, tmp_path, capsys):
    assert main(["export", str(finished_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("causalprune: error: format onnx needs the onnx extra: pip install 'causalprune[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_export_errors_are_one_line(finished_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "--format", "pt2"]) == 2
    assert main(["export", str(finished_run), "--format", "tflite"]) == 2
    damaged = tmp_path / "damaged"
    shutil.copytree(finished_run, damaged)
    (damaged / "model.pt").write_bytes(b"not a checkpoint")
    assert main(["export", str(damaged), "--format", "pt2", "--out", str(tmp_path / "x.pt2")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("causalprune: error: ") for line in lines)
    assert "missing" in lines[0] and "tflite" in lines[1] and "model.pt is damaged" in lines[2]
    assert not (tmp_path / "x.pt2").exists()


def test_latencies_are_measured_interleaved_and_tell_a_slower_network():
    import time as _time

    from causalprune.metrics import latencies_ms

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            _time.sleep(0.003)
            return self.lin(x)

    fast, slow = nn.Linear(4, 2), Slow()
    slow.train()
    a, b = latencies_ms([fast, slow], (4,), batch_sizes=(1, 8), repeats=5, warmup=1)
    assert b["batch_1"] >= 3.0 > a["batch_1"] and b["batch_8"] >= 3.0 > a["batch_8"]
    assert a["repeats"] == b["repeats"] == 5 and slow.training  # the mode is restored


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is None, reason="safetensors is not installed")
def test_export_safetensors_holds_the_dense_weights_with_their_zeros(finished_run, tmp_path):
    from safetensors.torch import load_file

    r = export_run(finished_run, "safetensors", tmp_path / "m.safetensors")
    model, _ = _model_and_input(finished_run)
    state = load_file(tmp_path / "m.safetensors")
    assert set(state) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)
    assert r["bytes"] == (tmp_path / "m.safetensors").stat().st_size


def test_export_sparse_is_exact_and_smaller_at_80_percent(finished_run, tmp_path):
    from causalprune.formats import load_sparse

    r = export_run(finished_run, "sparse", tmp_path / "s.pt")
    model, _ = _model_and_input(finished_run)
    raw = torch.load(tmp_path / "s.pt", weights_only=True)["state"]
    weights = [k for k, v in raw.items() if v.layout == torch.sparse_csr]
    assert weights == [k for k, v in model.state_dict().items() if k.endswith("weight")]  # both Linear weights
    for k in weights:  # CSR keeps exactly the non-zeros, with int32 indices
        assert raw[k].values().numel() == int((model.state_dict()[k] != 0).sum())
        assert raw[k].col_indices().dtype == torch.int32
    dense = load_sparse(tmp_path / "s.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(dense[k], v)
    assert r["bytes"] < r["dense_bytes"], r  # the tiny MLP: file overheads are a large part of either size
    assert not list(tmp_path.glob(".s.pt.dense*"))  # the measuring copy is gone


def test_sparse_files_shrink_as_computed_at_80_percent(tmp_path):
    from causalprune import Mask
    from causalprune.formats import save_dense, save_sparse

    torch.manual_seed(0)
    model = torch.nn.Linear(512, 512, bias=False)
    keep = torch.rand(512, 512) >= 0.8
    Mask({"weight": keep}).apply_(model)
    dense, sparse = save_dense(model, tmp_path / "d.pt"), save_sparse(model, tmp_path / "s.pt")
    # CSR: 4 bytes of value + 4 of int32 column index per kept entry, 4 per row pointer
    payload = 8 * int(keep.sum()) + 4 * 513
    assert abs(sparse - payload) < 4096 and abs(dense - 4 * 512 * 512) < 4096, (sparse, dense)
    assert sparse / dense < 0.42
