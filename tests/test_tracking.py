"""--track tensorboard,mlflow: the records read back with each library's own reader."""

import json
import math

import pytest

from causalprune import tracking
from causalprune.cli import main
from causalprune.config import ConfigError, config_from_dict
from causalprune.experiment import load_splits, run_experiment

from .conftest import TINY

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


@pytest.fixture
def no_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _metrics_lines(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_tracked_run_reads_back_in_tensorboard_and_mlflow(tmp_path, no_uri):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    code = main(["run", "--out", str(run), "--track", "tensorboard,mlflow",
                 *[a for k, v in _flat(TINY).items() for a in ("--set", f"{k}={v}")]])  # fmt: skip
    assert code == 0
    lines = _metrics_lines(run)
    epochs = [e for e in lines if e["event"] == "epoch"]
    rounds = [e for e in lines if e["event"] == "level"]
    assert len(epochs) == 1 + 2 + 1 and len(rounds) == 2  # n_pre + n_iter·n_prune + n_post; n_iter rounds

    acc, tb = _scalars(run)
    assert [s for s, _ in tb["epoch/train_loss"]] == [e["step"] for e in epochs]
    assert [v for _, v in tb["epoch/train_loss"]] == pytest.approx([e["train_loss"] for e in epochs])
    assert tb["epoch/val_accuracy"] == [(e["step"], pytest.approx(e["val_accuracy"])) for e in epochs
                                        if "val_accuracy" in e]  # fmt: skip
    assert [v for _, v in tb["epoch/round"]] == [0, 1, 2, 2]  # post: after the last round
    # the network's sparsity while the epoch trained: a round's epochs train before its selection
    assert [v for _, v in tb["epoch/sparsity"]] == pytest.approx([0, 0, rounds[0]["sparsity"], rounds[1]["sparsity"]])
    assert [(s, v) for s, v in tb["round/T"]] == [(e["step"], e["T"]) for e in rounds]
    assert "config/text_summary" in acc.Tags()["tensors"]

    state = json.loads((run / tracking.STATE).read_text())
    assert state["tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    r = client.get_run(state["run_id"])
    assert r.info.status == "FINISHED"
    assert client.get_experiment(r.info.experiment_id).name == "tiny"
    assert [m.step for m in client.get_metric_history(r.info.run_id, "epoch/train_loss")] == [e["step"] for e in epochs]
    assert [m.value for m in client.get_metric_history(r.info.run_id, "round/T")] == [e["T"] for e in rounds]
    assert r.data.params["prune.method"] == "causal" and r.data.params["model.widths"] == "[32]"
    assert r.data.params["track"] == '["tensorboard", "mlflow"]'
    summary = json.loads((run / "summary.json").read_text())
    assert r.data.metrics["summary/sparsity_actual"] == pytest.approx(summary["sparsity_actual"])
    assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["summary.json"]


def test_a_resumed_run_neither_duplicates_nor_loses_its_records(tiny_config, tmp_path, no_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    from causalprune.runfolder import RunFolder

    cfg = tiny_config("prune.n_iter=3", "track=[tensorboard,mlflow]")
    save_level = RunFolder.save_level

    def stops(self, k, *args, **kwargs):  # killed as round 2 writes its files
        if k == 2:
            raise KeyboardInterrupt
        save_level(self, k, *args, **kwargs)

    monkeypatch.setattr(RunFolder, "save_level", stops)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "run", quiet=True)
    first = json.loads((tmp_path / "run" / tracking.STATE).read_text())["run_id"]
    monkeypatch.undo()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_experiment(cfg, tmp_path / "run", quiet=True)

    per_epoch = math.ceil(len(load_splits(cfg).train[1]) / cfg.train.batch_size)
    steps = [per_epoch * i for i in range(1, 1 + 3 + 1 + 1)]  # pre, 3 rounds, post
    _, tb = _scalars(tmp_path / "run")
    assert [s for s, _ in tb["epoch/train_loss"]] == steps  # rewritten from the start: once each
    state = json.loads((tmp_path / "run" / tracking.STATE).read_text())
    assert state["run_id"] == first  # the same MLflow run, resumed
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    history = [m.step for m in client.get_metric_history(first, "epoch/train_loss")]
    assert history == steps  # each step once: replayed stages and level_2 (cut short, redone) not logged again
    losses = [e["train_loss"] for e in _metrics_lines(tmp_path / "run") if e["event"] == "epoch"]
    assert [m.value for m in client.get_metric_history(first, "epoch/train_loss")] == pytest.approx(losses)
    assert [m.step for m in client.get_metric_history(first, "round/T")] == [per_epoch * (1 + k) for k in (1, 2, 3)]
    assert client.get_run(first).info.status == "FINISHED"


def test_the_track_key_is_checked(tiny_config):
    assert tiny_config().track == ()
    with pytest.raises(ConfigError, match=r"unknown tracker 'wandb' \(config key track, --track\); valid: "
                                          r"tensorboard, mlflow"):  # fmt: skip
        from causalprune import resolve

        resolve.check(tiny_config("track=[wandb]"))
    with pytest.raises(ConfigError, match="track must be a list"):
        tiny_config("track=tensorboard")
    # an execution key: the run folder and digest do not change with it
    assert tiny_config("track=[tensorboard]").digest() == tiny_config().digest()


def test_an_unknown_tracker_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "r"), "--track", "tensorboard,wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["causalprune: error: unknown tracker 'wandb' (config key track, --track); valid: tensorboard, "
                   "mlflow"]  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_a_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch, no_uri):
    real = tracking._import

    def missing(module):
        if module == "mlflow":
            raise ModuleNotFoundError("No module named 'mlflow'")
        return real(module)

    monkeypatch.setattr(tracking, "_import", missing)
    assert main(["compare", "--out", str(tmp_path / "g"), "--track", "mlflow", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["causalprune: error: track mlflow needs the package 'mlflow', which is not installed: "
                   "pip install 'causalprune[track]'"]  # fmt: skip
    assert not (tmp_path / "g").exists()


def test_compare_tracks_every_run_and_keeps_the_table(tmp_path, no_uri):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "grid"
    code = main(["compare", "--out", str(out), "--methods", "magnitude,random", "--sparsity", "0.5", "--seeds", "0",
                 "--track", "mlflow", *[a for k, v in _flat(TINY).items() for a in ("--set", f"{k}={v}")]])  # fmt: skip
    assert code == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params.get("prune.method", "grid") for r in runs) == ["grid", "magnitude", "random"]
    grid = next(r for r in runs if r.info.run_name == "grid")
    assert sorted(a.path for a in client.list_artifacts(grid.info.run_id)) == ["figures", "table.csv", "table.md"]
    figs = {a.path for a in client.list_artifacts(grid.info.run_id, "figures")}
    assert figs == {f"figures/{p.name}" for p in (out / "figures").iterdir()} and "figures/skipped.txt" in figs
    assert not list(out.rglob("tensorboard"))  # only the trackers asked for


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def test_flatten_gives_dotted_keys():
    cfg = config_from_dict(TINY, [])
    flat = tracking.flatten(cfg.to_dict())
    assert flat["train.lr"] == "0.1" and flat["name"] == "tiny" and flat["data.name"] == "digits"


def test_sweep_tracks_with_tensorboard(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    fixed = {k: json.loads(v) if k == "model.widths" else v for k, v in _flat(TINY).items() if k != "name"}
    sweep.write_text(f"name: mini\nset: {json.dumps(fixed)}\ngrid:\n  prune.method: [magnitude]\n  seed: [0]\n")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--track", "tensorboard"]) == 0
    (run,) = [p.parent for p in (tmp_path / "out").rglob("summary.json")]
    _, tb = _scalars(run)
    assert len(tb["epoch/train_loss"]) == 1 + 2 + 1 and len(tb["round/sparsity"]) == 2
    assert not (tmp_path / "out" / "mlflow.db").exists()
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "bad"), "--track", "mlflow,wandb"]) == 2
    assert "unknown tracker 'wandb'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
