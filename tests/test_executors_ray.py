"""Grids on Ray (`--executor ray`): the same runs as local, failures in one line, resume; bad input refused."""

import importlib.util
import json
import os
import socket

import pytest
import torch

from causalprune.cli import main
from causalprune.executors import Task

from .grid_oracle import GRID, fingerprint, tiny_file


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs) for the module: the executor joins it instead of starting its own."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'causalprune[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    """The reference: the grid run one cell after another in this process (--executor local)."""
    root = tmp_path_factory.mktemp("local")
    out = root / "cmp"
    assert main(["compare", str(tiny_file(root)), *GRID, "--out", str(out)]) == 0
    return out


def test_a_grid_on_ray_gives_the_local_masks_and_accuracies_and_resumes(ray_session, local_grid, tmp_path, capsys):
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert main(["compare", str(tiny_file(tmp_path)), *GRID, "--executor", "ray", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 done, 0 running, 0 failed, 0 queued" in printed and "[1/8]" not in printed  # the counts line
    expected = fingerprint(local_grid)
    assert len(expected) == 8 and fingerprint(out) == expected
    assert "| causal | 0.8 | 2 |" in printed and (out / "table.md").exists()

    # re-submitted: finished runs are read back, an interrupted one resumes, a missing one runs again
    untouched = out / "magnitude" / "p0.9" / "seed_1" / "level_1" / "mask.pt"
    stamp = untouched.stat().st_mtime_ns
    (out / "causal" / "p0.9" / "seed_0" / "summary.json").unlink()  # stopped before its final stage
    for f in sorted((out / "causal" / "p0.8" / "seed_1").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    assert main(["compare", str(tiny_file(tmp_path)), *GRID, "--executor", "ray", "--out", str(out)]) == 0
    assert fingerprint(out) == expected and untouched.stat().st_mtime_ns == stamp


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA: the failing cell asks for it")
def test_a_failed_run_on_ray_is_one_line_and_the_rest_finish(ray_session, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(tiny_file(tmp_path)), "--methods", "magnitude", "--sparsity", "0.8", "--seeds", "0",
                 "--grid", "train.device=cpu,cuda", "--executor", "ray", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    bad = out / "magnitude_device=cuda_" / "p0.8" / "seed_0"
    assert captured.err.splitlines() == [
        f"causalprune: error: magnitude[device=cuda] seed 0 failed in {bad}: ConfigError: train.device is cuda but "
        f"no CUDA device is available (use cpu or auto); traceback in {bad / 'error.log'}"]  # fmt: skip
    assert "Traceback" in (bad / "error.log").read_text()
    assert (out / "magnitude_device=cpu_" / "p0.8" / "seed_0" / "summary.json").exists()
    assert "1 done, 0 running, 1 failed, 0 queued" in captured.out and "1 of 2 runs (1 failed)" in captured.out


def test_a_sweep_runs_on_ray_and_gpus_no_node_has_are_refused(ray_session, tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {tiny_file(tmp_path)}\nname: s\nset: {{prune.method: magnitude, train.threads: 1}}\n"
                     "grid: {prune.sparsity: [0.8, 0.9], seed: [0]}\n")  # fmt: skip
    out = tmp_path / "sw"
    assert main(["sweep", str(sweep), "--out", str(out), "--executor", "ray"]) == 0
    printed = capsys.readouterr().out
    assert "2 runs, 0 already finished, 2 to run on Ray" in printed
    assert "2 done, 0 running, 0 failed, 0 queued" in printed
    assert sorted(p.parent.name for p in out.glob("*/summary.json")) == ["sparsity=0.8_seed=0", "sparsity=0.9_seed=0"]
    gpu = tmp_path / "gpu"
    assert main(["sweep", str(sweep), "--out", str(gpu), "--executor", "ray", "--gpus-per-run", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "causalprune: error: --gpus-per-run 1, but the Ray cluster's nodes have at most 0 GPUs; nothing was submitted"]
    assert not list(gpu.rglob("summary.json"))


def test_a_relative_out_is_made_absolute_for_the_workers(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(tiny_file(tmp_path)), "--methods", "magnitude", "--sparsity", "0.8", "--seeds", "0",
                 "--executor", "ray", "--out", "cmp"]) == 0  # fmt: skip
    assert f"wrote {tmp_path / 'cmp' / 'table.md'} and" in capsys.readouterr().out


def test_a_ray_worker_that_dies_fails_its_task_only(ray_session):
    from causalprune.executors_ray import RayExecutor

    def dies(*, threads):  # defined here: Ray ships it by value
        os._exit(3)

    def works(x, *, threads):
        return x + threads

    outcomes = RayExecutor(threads=1).run([Task("a/seed_0", dies), Task("b", works, (1,), after=("a/seed_0",))])
    assert [o.ok for o in outcomes] == [False, True] and outcomes[1].value == 2
    error = outcomes[0].error
    assert error.startswith("the Ray worker running a/seed_0 died (") and "worker logs in " in error
    assert "\n" not in error


def test_a_cell_on_ray_with_nproc_runs_as_processes_inside_its_task(ray_session, tmp_path, capsys):
    grid = ["compare", str(tiny_file(tmp_path)), "--methods", "magnitude", "--sparsity", "0.8", "--seeds", "0",
            "--set", "train.threads=1"]  # fmt: skip
    assert main([*grid, "--out", str(tmp_path / "one")]) == 0
    out = tmp_path / "two"
    assert main([*grid, "--out", str(out), "--executor", "ray", "--nproc", "2"]) == 0  # num_cpus 2: the whole Ray
    assert "1 done, 0 running, 0 failed, 0 queued" in capsys.readouterr().out
    one, two = fingerprint(tmp_path / "one"), fingerprint(out)
    assert len(two) == 1 and {r: m for r, (m, _) in two.items()} == {r: m for r, (m, _) in one.items()}
    summary = json.loads((out / "magnitude" / "p0.8" / "seed_0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and (out / "table.md").is_file()


def _cli_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


def test_bad_executor_options_are_one_line_and_submit_nothing(tmp_path, capsys, monkeypatch):
    cfg, out = str(tiny_file(tmp_path)), tmp_path / "cmp"
    run = ["compare", cfg, "--methods", "magnitude", "--seeds", "0", "--out", str(out)]
    assert _cli_error([*run, "--executor", "dask"], capsys) == (
        "causalprune: error: --executor must be local, ray or slurm, got 'dask'")
    assert _cli_error([*run, "--slurm-partition", "gpu"], capsys) == (
        "causalprune: error: --slurm-partition is a Slurm option: it needs --executor slurm (the executor is local)")
    assert _cli_error([*run, "--executor", "ray", "--runs-per-job", "4"], capsys) == (
        "causalprune: error: --runs-per-job is a Slurm option: it needs --executor slurm (the executor is ray)")
    assert _cli_error([*run, "--gpus-per-run", "1"], capsys) == (
        "causalprune: error: --gpus-per-run needs --executor ray or slurm (local runs take train.device)")
    assert _cli_error(["sweep", "x.yaml", "--ray-address", "h:1"], capsys) == (
        "causalprune: error: --ray-address needs --executor ray (the executor is local)")
    assert _cli_error([*run, "--executor", "ray", "--nproc", "0"], capsys) == (
        "causalprune: error: --nproc must be >= 1, got 0")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("ray", "submitit")
                        else find_spec(name, *a))  # fmt: skip
    assert _cli_error([*run, "--executor", "ray"], capsys) == (
        "causalprune: error: --executor ray needs Ray, which is not installed: pip install 'causalprune[ray]'")
    assert _cli_error([*run, "--executor", "slurm"], capsys) == ("causalprune: error: --executor slurm needs "
                                                                 "submitit, which is not installed: pip install "
                                                                 "'causalprune[slurm]'")  # fmt: skip
    assert not out.exists()


def test_an_unreachable_ray_address_is_one_line_and_submits_nothing(tmp_path, capsys):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'causalprune[ray]')")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "cmp"
    err = _cli_error(["compare", str(tiny_file(tmp_path)), "--methods", "magnitude", "--seeds", "0", "--out",
                      str(out), "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"], capsys)  # fmt: skip
    assert err.startswith(f"causalprune: error: --ray-address 127.0.0.1:{port}: no Ray cluster answers there (")
    assert err.endswith("nothing was submitted") and not out.exists()
