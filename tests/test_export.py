"""`causalprune export`: every file listed with its size, ONNX through its extra, suffixes, channel runs' sidecars."""

import importlib.util
import json

import pytest
import torch

from causalprune import export
from causalprune.cli import main
from causalprune.config import config_from_dict
from causalprune.experiment import run_experiment

from .conftest import TINY
from .test_structured import CHANNEL

needs_onnx = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
                                reason="the onnx extra is not installed (make setup installs it)")  # fmt: skip


@pytest.fixture(scope="module")
def weight_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "w"
    run_experiment(config_from_dict(TINY, ["prune.method=magnitude"]), d, quiet=True)
    return d


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "c"
    run_experiment(config_from_dict(CHANNEL, ["prune.method=magnitude"]), d, quiet=True)
    return d


def _sidecar(path):
    return json.loads(path.with_name(path.name + ".json").read_text())


def _listed_files_are_on_disk(side, folder):
    sizes = {f["name"]: f["bytes"] for f in side["files"]}
    assert sizes == {name: (folder / name).stat().st_size for name in sizes}
    assert side["bytes"] == sum(sizes.values())
    return sizes


@needs_onnx
@pytest.mark.parametrize("external", [False, True])
def test_onnx_export_lists_every_file_it_writes_and_runs_in_onnxruntime(weight_run, tmp_path, capsys, monkeypatch,
                                                                        external):  # fmt: skip
    import onnxruntime as ort

    if external:  # as a model with more weights than ONNX_EXTERNAL_BYTES: its weights go to <file>.data
        monkeypatch.setattr(export, "ONNX_EXTERNAL_BYTES", 0)
    out = tmp_path / "m.onnx"
    assert main(["export", str(weight_run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = sorted(p.name for p in tmp_path.iterdir())
    want = ["m.onnx", "m.onnx.data", "m.onnx.json"] if external else ["m.onnx", "m.onnx.json"]
    assert written == want
    side = _sidecar(out)
    sizes = _listed_files_are_on_disk(side, tmp_path)
    assert sorted(sizes) == [n for n in want if not n.endswith(".json")]
    for name, size in sizes.items():
        assert f"{tmp_path / name} ({size} bytes)" in printed
    assert "checked with onnxruntime" in side["check"] and side["dynamic_batch"] is True
    model, shape, _, _ = export.load_finished_model(weight_run)
    x = torch.randn(7, *shape)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), model(x))


@pytest.mark.parametrize("hidden", [("onnxscript",), ("onnx", "onnxscript")])
def test_onnx_refusal_names_the_extra_and_every_missing_module(weight_run, tmp_path, capsys, monkeypatch, hidden):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    assert main(["export", str(weight_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("causalprune: error: format onnx needs the onnx extra: pip install 'causalprune[onnx]' "
                   f"(missing module{'s' if len(hidden) > 1 else ''}: {', '.join(hidden)})")  # fmt: skip
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("fmt", "name", "expected"), [("pt2", "m.onnx", ".pt2"), ("onnx", "m.pt2", ".onnx"),
                                                       ("state_dict", "m.safetensors", ".pt or .pth"),
                                                       ("sparse", "m", ".pt or .pth"),
                                                       ("safetensors", "m.pt", ".safetensors")])  # fmt: skip
def test_a_suffix_of_another_format_is_refused_in_one_line(weight_run, tmp_path, capsys, fmt, name, expected):
    assert main(["export", str(weight_run), "--format", fmt, "--out", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"format {fmt} writes a {expected} file" in err[0] and str(tmp_path / name) in err[0]
    assert not list(tmp_path.iterdir())


def test_a_pth_state_dict_is_accepted(weight_run, tmp_path):
    r = export.export_run(weight_run, "state_dict", tmp_path / "m.pth")
    assert r["files"] == [{"name": "m.pth", "bytes": (tmp_path / "m.pth").stat().st_size}]


def test_a_channel_runs_sidecar_describes_the_slim_network(channel_run, tmp_path):
    r = export.export_run(channel_run, "state_dict", tmp_path / "sd.pt")
    state = torch.load(tmp_path / "sd.pt", weights_only=True)
    side = _sidecar(tmp_path / "sd.pt")
    _listed_files_are_on_disk(side, tmp_path)
    assert side == {k: v for k, v in r.items() if k not in ("file", "paths")}
    # cnn2d: three convolutions (widths) and the classifier; output channels read off the saved weights
    convs = [state[n].shape[0] for n in side["layer_widths"]]
    assert side["layer_widths"] == dict(zip(side["layer_widths"], convs, strict=True))
    assert side["model"]["widths"] == convs[:-1] and convs[-1] == 10
    assert side["model"]["dense_widths"] == list(CHANNEL["model"]["widths"])
    assert sum(side["model"]["widths"]) < sum(CHANNEL["model"]["widths"])  # the budget removed channels
    assert side["granularity"] == "channel" and side["speedup_target"] == 2.0


def test_a_weight_runs_sidecar_keeps_its_config_widths(weight_run, tmp_path):
    side = export.export_run(weight_run, "state_dict", tmp_path / "sd.pt")
    assert side["model"]["widths"] == list(TINY["model"]["widths"]) and "dense_widths" not in side["model"]
    assert list(side["layer_widths"].values()) == [*TINY["model"]["widths"], 10]


def test_the_sparse_export_of_a_slim_network_says_it_is_not_smaller(channel_run, tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert main(["export", str(channel_run), "--format", "sparse", "--out", str(out)]) == 0
    side = _sidecar(out)
    assert side["bytes"] >= side["dense_bytes"]  # no zeros to compress: CSR only adds indices
    assert "no zeros to compress" in side["note"] and "safetensors" in side["note"]
    assert f"note: {side['note']}" in capsys.readouterr().out.splitlines()


def test_load_run_is_the_packages_and_matches_the_exported_model(channel_run):
    from causalprune import LoadedRun, load_run

    loaded = load_run(channel_run)
    assert isinstance(loaded, LoadedRun) and loaded.model is loaded[0] and loaded.mask is loaded[1]
    model, _, _, _ = export.load_finished_model(channel_run)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values(),
                                                 strict=True))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no mask.pt"):
        (channel_run.parent / "empty").mkdir(exist_ok=True)
        for f in ("config.yaml", "model.pt", "summary.json"):
            (channel_run.parent / "empty" / f).write_bytes((channel_run / f).read_bytes())
        load_run(channel_run.parent / "empty")


def test_make_setup_installs_the_onnx_extra_so_the_onnxruntime_check_runs_in_ci():
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["onnx"]
    assert sorted(re.split(r"[<>=!~ ]", req)[0] for req in extra) == ["onnx", "onnxruntime", "onnxscript"]
    setup = re.search(r"pip install -q -e '\.\[([a-z,]+)\]'", (root / "Makefile").read_text())
    assert "onnx" in setup.group(1).split(",")
