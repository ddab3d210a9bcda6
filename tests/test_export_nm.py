"""`causalprune export --semi-structured`: a 2:4 run's Linear weights for sparse tensor cores, or a one-line refusal."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from causalprune import export
from causalprune.cli import main
from causalprune.config import config_from_dict
from causalprune.experiment import run_experiment

from .conftest import TINY

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a machine without CUDA")


@pytest.fixture(scope="module")
def nm_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_nm") / "r"
    spec = copy.deepcopy(TINY)
    spec["prune"] = {**spec["prune"], "method": "magnitude", "pattern": "2:4"}
    del spec["prune"]["sparsity"]
    run_experiment(config_from_dict(spec), d, quiet=True)
    return d


def test_the_weights_of_a_2_4_run_hold_2_4_and_those_the_kernels_cannot_take_stay_dense(nm_run):
    model, mask = export.load_run(nm_run)
    convert, dense = export.check_semi_structured(model, mask)
    assert convert == ["net.1.weight"]  # (32, 64): rows a multiple of 32, columns of 64
    assert dense == {"net.3.weight": "shape (10, 32): the kernels take rows a multiple of 32 and columns a "
                                     "multiple of 64"}  # fmt: skip


def test_a_weight_that_breaks_2_4_is_refused_naming_its_row_and_block(nm_run):
    model, mask = export.load_run(nm_run)
    with torch.no_grad():
        model.net[1].weight[3, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ValueError) as e:
        export.check_semi_structured(model, mask)
    assert str(e.value) == ("weight net.1.weight is not 2:4: row 3, inputs 8..11 hold 3 nonzeros (at most 2); "
                            "--semi-structured needs every pruned Linear weight 2:4")  # fmt: skip


@pytest.mark.parametrize(("fmt", "pattern", "message"), [
    ("state_dict", None, "--semi-structured needs a run pruned with prune.pattern \"2:4\" (torch.sparse."
                         "to_sparse_semi_structured takes 2:4 only, for float16/bfloat16); this run has prune.pattern "
                         "None"),
    ("state_dict", "1:4", "this run has prune.pattern '1:4'"),
    ("pt2", "2:4", "--semi-structured writes format state_dict (torch.save of the converted tensors), got "
                   "--format pt2"),
])  # fmt: skip
def test_another_pattern_or_format_is_refused(fmt, pattern, message):
    cfg = SimpleNamespace(prune=SimpleNamespace(pattern=pattern))
    with pytest.raises(ValueError) as e:
        export._check_semi_structured_run(fmt, cfg)
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1


@no_cuda
def test_without_cuda_the_export_is_one_line_naming_what_is_missing_and_writes_nothing(nm_run, tmp_path, capsys):
    out = tmp_path / "semi.pt"
    assert main(["export", str(nm_run), "--format", "state_dict", "--out", str(out), "--semi-structured"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["causalprune: error: --semi-structured needs a CUDA device of compute capability 8.0+ (Ampere or "
                   "newer) for torch.sparse.to_sparse_semi_structured: no CUDA device (torch.cuda.is_available() is "
                   "False)"]  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_an_old_gpu_is_named_with_its_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    assert export.semi_structured_support() == "CUDA device Tesla T4 has compute capability 7.5, below 8.0 (Ampere)"


def test_where_cuda_supports_it_the_sidecar_lists_converted_and_dense_weights(nm_run, tmp_path, capsys, monkeypatch):
    saved = {}
    monkeypatch.setattr(export, "semi_structured_support", lambda: "")  # as on an sm80+ device
    monkeypatch.setattr(export, "_save_semi_structured", lambda model, names, out: (saved.update(names=names),
                                                                                   out.write_bytes(b"x")))  # fmt: skip
    out = tmp_path / "semi.pt"
    assert main(["export", str(nm_run), "--format", "state_dict", "--out", str(out), "--semi-structured"]) == 0
    assert saved["names"] == ["net.1.weight"]
    side = json.loads((tmp_path / "semi.pt.json").read_text())
    assert side["semi_structured"] == ["net.1.weight"] and side["dtype"] == "float16"
    assert list(side["kept_dense"]) == ["net.3.weight"]
    printed = capsys.readouterr().out
    assert "semi-structured 2:4 (float16): net.1.weight; kept dense: net.3.weight: shape (10, 32)" in printed


def test_every_sidecar_records_the_runs_pattern(nm_run, tmp_path, capsys):
    assert main(["export", str(nm_run), "--format", "state_dict", "--out", str(tmp_path / "d.pt")]) == 0
    assert "(input shape (64,) float32)" in capsys.readouterr().out
    side = json.loads((tmp_path / "d.pt.json").read_text())
    assert side["pattern"] == "2:4" and "semi_structured" not in side


def test_the_conversion_casts_a_copy_and_converts_exactly_the_listed_weights(nm_run, tmp_path, monkeypatch):
    seen = []

    def fake(w):  # to_sparse_semi_structured needs CUDA: record what it is given, keep it dense
        seen.append((tuple(w.shape), w.dtype))
        return w.clone()

    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", fake)
    model, _ = export.load_run(nm_run)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export._save_semi_structured(model, ["net.1.weight"], tmp_path / "s.pt", device="cpu")
    assert seen == [((32, 64), torch.float16)]
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values())
    assert torch.equal(state["net.1.weight"], before["net.1.weight"].half())
    assert all(torch.equal(v, before[k]) and v.dtype == torch.float32 for k, v in model.state_dict().items())
