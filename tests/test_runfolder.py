"""Run-folder integrity: one process per folder, foreign and damaged folders refused by name, umask."""

import json
import os
import shutil

import yaml

from causalprune import Mask
from causalprune.cli import main
from causalprune.io import save_text
from causalprune.runfolder import RunFolder

from .conftest import TINY


def _config(tmp_path, *sets):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    args = [str(path)]
    for s in sets:
        args += ["--set", s]
    return args


def _error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("causalprune: error:"), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_a_second_process_on_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with RunFolder(out).lock():  # another process holding the folder (flock is per open file)
        assert main(["run", *_config(tmp_path, "prune.method=magnitude"), "--out", str(out)]) == 2
    _error(capsys, "is in use by another process", f"pid {os.getpid()}")
    assert not (out / "config.yaml").exists()
    assert main(["run", *_config(tmp_path, "prune.method=magnitude"), "--out", str(out)]) == 0  # lock released


def test_a_busy_folder_is_refused_before_the_data_is_loaded(tmp_path, capsys, monkeypatch):
    import causalprune.experiment as experiment

    def loads(*args, **kwargs):
        raise AssertionError("the data was loaded before the run folder's lock was taken")

    monkeypatch.setattr(experiment, "load_splits", loads)
    out = tmp_path / "run"
    with RunFolder(out).lock():  # another process running there
        assert main(["run", *_config(tmp_path, "prune.method=magnitude"), "--out", str(out)]) == 2
    _error(capsys, "is in use by another process")


def test_bad_input_leaves_no_folder_behind_the_lock(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "run"  # the lock creates all three; a refused run removes them again
    assert main(["run", *_config(tmp_path, "causal.probe_size=5000"), "--out", str(out)]) == 2
    _error(capsys, "probe")
    assert not (tmp_path / "a").exists()
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")  # a folder that was there before is left as it was found
    assert main(["run", *_config(tmp_path, "causal.probe_size=5000"), "--out", str(out)]) == 2
    _error(capsys, "probe")
    assert (out / "keep.txt").read_text() == "mine" and not (out / "config.yaml").exists()


def test_a_foreign_folder_with_a_summary_is_refused(tmp_path, capsys):
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "summary.json").write_text('{"accuracy": 0.9}')
    assert main(["run", *_config(tmp_path), "--out", str(out)]) == 2
    _error(capsys, "not a causalprune run folder")
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # nothing written into it


def test_damaged_files_are_named_with_the_command_that_recovers(tmp_path, capsys):
    args = [*_config(tmp_path, "prune.method=magnitude", "prune.n_iter=2"), "--out", str(tmp_path / "run")]
    assert main(["run", *args]) == 0
    run = tmp_path / "run"
    final = Mask.load(run / "mask.pt")
    # A damaged summary: named, with the recovery.
    (run / "summary.json").write_text('{"method": "magn')
    assert main(["run", *args]) == 2
    _error(capsys, "summary.json is damaged", "mv ")
    # Stopped before the post stage, with round 2's checkpoint truncated.
    for f in ("summary.json", "model.pt", "mask.pt"):
        (run / f).unlink()
    ckpt = run / "level_2" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    assert main(["run", *args]) == 2
    line = _error(capsys, "level_2/checkpoint.pt is damaged", "to redo that stage: mv")
    src, dst = line.split("mv ")[1].split(" and re-run")[0].split()
    shutil.move(src, dst)  # the printed recovery
    assert main(["run", *args]) == 0
    assert Mask.load(run / "mask.pt") == final  # round 2 redone: the same masks


def test_an_unwritable_out_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", *_config(tmp_path), "--out", str(blocker / "run")]) == 2
    _error(capsys, "cannot write to", str(blocker / "run"))


def test_finished_runs_say_so_in_one_line(tmp_path, capsys):
    args = [*_config(tmp_path, "prune.method=magnitude"), "--out", str(tmp_path / "run")]
    assert main(["run", *args]) == 0
    capsys.readouterr()
    assert main(["run", *args]) == 0
    assert capsys.readouterr().out.strip() == f"already finished: {tmp_path / 'run'}"


def test_run_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        save_text("x", tmp_path / "a.txt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


def test_threads_follow_the_config_or_share_the_cores(tmp_path):
    from causalprune.config import config_from_dict
    from causalprune.experiment import available_cores, run_experiment, threads_for

    cfg = config_from_dict(TINY, ["prune.method=magnitude"])
    assert threads_for(cfg) == available_cores()
    assert threads_for(cfg, jobs=available_cores() + 5) == 1  # never 0
    assert threads_for(config_from_dict(TINY, ["train.threads=3"]), jobs=8) == 3
    s = run_experiment(config_from_dict(TINY, ["prune.method=magnitude", "train.threads=1"]), tmp_path / "r",
                       quiet=True)  # fmt: skip
    assert s["threads"] == 1
    env = json.loads((tmp_path / "r" / "env.json").read_text())
    assert env["threads"] == 1


def test_plain_progress_lines_when_stdout_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    from causalprune import train
    from causalprune.config import config_from_dict
    from causalprune.experiment import run_experiment

    monkeypatch.setattr(train, "PROGRESS_EVERY_S", 0.0)  # every epoch
    run_experiment(config_from_dict(TINY, ["prune.method=magnitude"]), tmp_path / "r", quiet=True)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("pre: epoch 1/1, train loss ") for line in lines), lines
    assert any(line.startswith("post: epoch 1/1") for line in lines), lines


def test_threads_are_not_part_of_a_runs_identity_and_are_restored(tmp_path, capsys):
    import torch

    from causalprune.config import config_from_dict, load_config
    from causalprune.experiment import run_experiment

    assert load_config(None, ["train.threads=1"]).digest() == load_config(None).digest()
    before = torch.get_num_threads()
    run_experiment(config_from_dict(TINY, ["prune.method=magnitude", "train.threads=1"]), tmp_path / "r", quiet=True)
    assert torch.get_num_threads() == before  # a library caller's setting is left as it was
    # The same run with another thread count is the same run: finished, not refused.
    s = run_experiment(config_from_dict(TINY, ["prune.method=magnitude"]), tmp_path / "r")
    assert s["threads"] == 1 and capsys.readouterr().out.startswith("already finished")


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, monkeypatch):
    import dataclasses

    import pytest
    import torch

    from causalprune import criteria
    from causalprune.config import config_from_dict
    from causalprune.experiment import available_cores, run_experiment

    if available_cores() < 2:
        pytest.skip("needs 2 cores to start with fewer threads than the default")
    original = criteria.METHODS["magnitude"]
    seen: list[int] = []

    def stops_in_round_2(inp):
        seen.append(torch.get_num_threads())
        if len(seen) == 2:
            raise KeyboardInterrupt
        return original.fn(inp)

    monkeypatch.setitem(criteria.METHODS, "magnitude", original.with_scorer("weight", stops_in_round_2))
    cfg = config_from_dict(TINY, ["prune.method=magnitude", "prune.n_iter=2"])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=1)), tmp_path / "r")
    s = run_experiment(cfg, tmp_path / "r", quiet=True)  # default threads, resumed: keeps 1
    assert seen == [1, 1, 1] and s["threads"] == 1
