"""Grids as submitit jobs (`--executor slurm`), run through submitit's local backend: the same runs as local."""

import json
import os

import pytest

from causalprune.cli import main
from causalprune.compare import run_grid
from causalprune.config import config_from_dict
from causalprune.executors import Task

from .conftest import TINY
from .grid_oracle import GRID, fingerprint, tiny_file

submitit = pytest.importorskip("submitit", reason="the slurm extra is not installed (pip install 'causalprune[slurm]')")

from causalprune.executors_slurm import SlurmExecutor  # noqa: E402


def test_a_grid_as_local_submitit_jobs_gives_the_local_masks_and_accuracies(tmp_path, capsys):
    local = tmp_path / "local"
    assert main(["compare", str(tiny_file(tmp_path)), *GRID, "--out", str(local)]) == 0
    out = tmp_path / "slurm"
    cfg = config_from_dict(TINY, ["train.threads=1"])
    executor = SlurmExecutor(out / "slurm_logs", cluster="local", runs_per_job=3, max_running=2, poll_s=0.2)
    capsys.readouterr()
    summaries, _, failed = run_grid(cfg, ["causal", "magnitude"], [0.8, 0.9], [0, 1], out, executor=executor)
    printed = capsys.readouterr().out
    assert failed == [] and len(summaries) == 8 and "8 done, 0 running, 0 failed, 0 queued" in printed
    assert fingerprint(out) == fingerprint(local)
    logs = sorted(p.name for p in (out / "slurm_logs").glob("*_log.err"))
    assert len(logs) == 3  # jobs of ≤ 3 runs: one of the 2 runs that train θ_pre, then 2 of the 6 that read it

    # re-submitted: finished runs are read back, an interrupted one resumes
    untouched = out / "magnitude" / "p0.9" / "seed_1" / "level_1" / "mask.pt"
    stamp = untouched.stat().st_mtime_ns
    (out / "causal" / "p0.9" / "seed_0" / "summary.json").unlink()
    _, _, failed = run_grid(cfg, ["causal", "magnitude"], [0.8, 0.9], [0, 1], out, executor=executor)
    assert failed == [] and fingerprint(out) == fingerprint(local) and untouched.stat().st_mtime_ns == stamp


def test_compare_executor_slurm_submits_batches_with_logs_under_the_output_folder(tmp_path, capsys, monkeypatch):
    from causalprune import executors_slurm

    made = []

    def local(*args, **kwargs):  # the CLI's executor, on submitit's local backend
        made.append(kwargs)
        return SlurmExecutor(*args, **{**kwargs, "cluster": "local", "poll_s": 0.2})

    monkeypatch.setattr(executors_slurm, "SlurmExecutor", local)
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny_file(tmp_path)), "--methods", "magnitude", "--sparsity", "0.8,0.9", "--seeds",
                 "0", "--set", "train.threads=1", "--out", str(out), "--executor", "slurm", "--runs-per-job", "2",
                 "--slurm-time", "5", "--slurm-partition", "debug"]) == 0  # fmt: skip
    assert made == [{"partition": "debug", "time_min": 5, "gpus_per_run": 0, "runs_per_job": 2, "jobs": 1}]
    assert "2 done, 0 running, 0 failed, 0 queued" in capsys.readouterr().out
    assert len(list((out / "slurm_logs").glob("*_log.out"))) == 2  # the θ_pre run, then the run that reads it
    assert len(list(out.glob("magnitude/p*/seed_0/summary.json"))) == 2


def test_a_job_that_dies_fails_its_runs_naming_its_log_and_the_rest_go_on(tmp_path):
    def dies(*, threads):  # defined here: submitit ships it by value
        os._exit(3)

    def works(x, *, threads):
        return x + threads

    executor = SlurmExecutor(tmp_path / "logs", cluster="local", threads=1, poll_s=0.2)
    outcomes = executor.run([Task("a/seed_0", dies), Task("b", works, (1,), after=("a/seed_0",))])
    assert [o.ok for o in outcomes] == [False, True] and outcomes[1].value == 2
    error = outcomes[0].error
    assert error.startswith("the job ") and " running a/seed_0 ended without a result (" in error
    assert error.endswith("_0_log.err") and str(tmp_path / "logs") in error and "\n" not in error


def test_slurm_options_are_checked_before_anything_is_submitted(tmp_path, capsys):
    run = ["compare", str(tiny_file(tmp_path)), "--methods", "magnitude", "--seeds", "0", "--out", str(tmp_path / "c")]
    for bad, line in [
        ({"runs_per_job": 0}, "--runs-per-job must be a positive number of runs, got 0"),
        ({"time_min": 0}, "--slurm-time must be a positive number of minutes, got 0"),
        ({"gpus_per_run": 0.5}, "--gpus-per-run must be a whole number >= 0 under Slurm, got 0.5"),
        ({"cluster": "pbs"}, "cluster must be slurm or local, got 'pbs'"),
    ]:
        with pytest.raises(ValueError) as e:
            SlurmExecutor(tmp_path / "l", **{"cluster": "local", **bad})
        assert str(e.value) == line
    if os.system("command -v sbatch >/dev/null") != 0:  # this machine has no Slurm: one line, exit 2
        assert main([*run, "--executor", "slurm"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "causalprune: error: --executor slurm: this machine has no Slurm (sbatch is not on PATH); nothing was "
            "submitted"]  # fmt: skip
        assert not (tmp_path / "c").exists()


def _masks_only(out):
    return {run: masks for run, (masks, _) in fingerprint(out).items()}


@pytest.mark.slow  # ~40 s on 2 shared cores: 2 runs here, then 2 runs of 2 processes
def test_compare_executor_slurm_nproc_runs_each_cell_as_processes_inside_its_job(tmp_path, capsys, monkeypatch):
    from causalprune import executors_slurm

    made = []

    def local(*args, **kwargs):  # the CLI's executor, on submitit's local backend
        made.append(kwargs)
        return SlurmExecutor(*args, **{**kwargs, "cluster": "local", "poll_s": 0.2})

    monkeypatch.setattr(executors_slurm, "SlurmExecutor", local)
    grid = ["compare", str(tiny_file(tmp_path)), "--methods", "causal", "--sparsity", "0.8", "--seeds", "0,1",
            "--set", "train.threads=1"]  # fmt: skip
    assert main([*grid, "--out", str(tmp_path / "one")]) == 0
    out = tmp_path / "two"
    assert main([*grid, "--out", str(out), "--executor", "slurm", "--nproc", "2"]) == 0
    assert "2 done, 0 running, 0 failed, 0 queued" in capsys.readouterr().out
    assert _masks_only(out) == _masks_only(tmp_path / "one") and len(_masks_only(out)) == 2
    for seed in (0, 1):
        summary = json.loads((out / "causal" / "p0.8" / f"seed_{seed}" / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["threads"] == 1
    assert len(list((out / "slurm_logs").glob("*_log.out"))) == 2  # one job per cell
    assert (out / "table.md").is_file()


def test_a_cell_that_fails_under_nproc_is_one_line_naming_its_folder_and_rank_logs(tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1' and os.environ.get('WORLD_SIZE'):\n"
        "    import causalprune.cli as cli\n"
        "    def _fail(args):\n"
        "        raise RuntimeError('boom on rank 1')\n"
        "    cli._cmd_run = _fail\n")  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    cfg = config_from_dict(TINY, ["train.threads=1"])
    out = tmp_path / "grid"
    executor = SlurmExecutor(out / "slurm_logs", cluster="local", poll_s=0.2)
    summaries, _, failed = run_grid(cfg, ["magnitude"], [0.8], [0], out, executor=executor, nproc=2)
    assert summaries == [] and len(failed) == 1
    folder = out / "magnitude" / "p0.8" / "seed_0"
    line = str(failed[0])
    assert "\n" not in line and f"causalprune run --nproc 2 of {folder} exited with code 1: " in line
    assert "rank 1 raised RuntimeError: boom on rank 1" in line
    assert f"rank logs: {folder / 'logs' / 'rank_<r>.log'}" in line and (folder / "logs" / "rank_1.log").is_file()


def test_nproc_cells_are_launched_tasks_asking_for_nproc_times_their_threads(tmp_path):
    from causalprune.compare import plan
    from causalprune.grid import run_cell, run_cell_launched, tasks

    cells = plan(config_from_dict(TINY, ["train.threads=3"]), ["magnitude"], [0.8], [0, 1], [])
    assert [(t.fn, t.threads) for t in tasks(cells, tmp_path)] == [(run_cell, 3)] * 2
    launched = tasks(cells, tmp_path, nproc=2)
    assert [(t.fn, t.threads, t.args[-1]) for t in launched] == [(run_cell_launched, 6, 2)] * 2
    unset = plan(config_from_dict(TINY), ["magnitude"], [0.8], [0], [])
    assert tasks(unset, tmp_path, nproc=2)[0].threads is None  # the executor's share, split among the processes
    with pytest.raises(ValueError, match=r"^--nproc must be >= 1, got 0$"):
        tasks(cells, tmp_path, nproc=0)
