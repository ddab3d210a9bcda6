"""Command-line interface: thin subcommands over the library. Errors: one line, exit status 2."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, criteria, lasso, platform, selection, trajectory

if TYPE_CHECKING:
    from .config import Config
    from .executors import Executor
    from .grid import Failed

DEMO = {"methods": "causal,magnitude,random", "sparsity": "0.9,0.98", "seeds": "0,1"}


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None


def _methods(text: str, granularity: str = "weight") -> list[str]:
    names = sorted(["dense", *criteria.names(granularity)]) if text == "all" else [m.strip() for m in text.split(",")
                                                                          if m.strip()]  # fmt: skip
    for m in names:
        criteria.get(m)  # raises, listing the valid names
    return names


def _cmd_list(_: argparse.Namespace) -> int:
    from .config import shipped_configs
    from .data import DATASETS
    from .models import MODELS

    print("models:     " + ", ".join(sorted(MODELS)))
    print("datasets:   " + ", ".join(sorted(DATASETS)))
    print("methods:         (granularities they score: w = weight, c = channel)")
    for name, c in sorted(criteria.METHODS.items()):
        levels = ",".join(g[0] for g in c.granularities) or "-"
        print(f"  {name:15s} [{levels:3s}] {c.description}")
    print("solvers:    " + ", ".join(lasso.SOLVERS))
    print("delta_loss: " + ", ".join(trajectory.DELTA_LOSSES))
    print("schedules:  " + ", ".join(selection.SCHEDULES))
    print("scopes:     " + ", ".join(selection.SCOPES))
    names = shipped_configs()
    print("configs:    " + ", ".join(n for n in names if not Path(n).name.startswith("sweep-")))
    print("sweeps:     " + ", ".join(n for n in names if Path(n).name.startswith("sweep-")))
    print("            (shipped inside the package: give the name, e.g. causalprune run mlp-digits)")
    return 0


def _launch(args: argparse.Namespace) -> int | None:
    """For ``--nproc N`` (N > 1, not already under torchrun): run the command as N processes and return its exit
    status, having said in one line why it failed (`launch.launch`); None: run in this process."""
    from . import launch

    return launch.launch(args.nproc, _without_nproc(args.argv), lambda: _run_home(args))


def _run_home(args: argparse.Namespace) -> Path | None:
    """Return the folder a ``run`` or ``compare`` writes (after a failure its ``logs/`` gets the rank logs)."""
    if args.out is not None:
        return Path(args.out)
    from . import resolve
    from .runfolder import default_run_dir

    cfg = resolve.load(args.config, args.set)
    return Path("runs") / f"compare-{cfg.name}-{cfg.digest()}" if args.func is _cmd_compare else default_run_dir(cfg)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _load(config: str | None, overrides: list[str]) -> Config:
    """Load and resolve a config with its ``--set`` overrides; say which file budget a ``--set`` budget replaced."""
    from . import resolve

    notes: list[str] = []
    cfg = resolve.load(config, overrides, notes)
    if platform.current().is_primary:
        for line in notes:
            print(f"causalprune: note: {line}", file=sys.stderr)
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    launched = _launch(args)
    if launched is not None:
        return launched
    from .experiment import run_experiment
    from .runfolder import RunFolder, default_run_dir

    cfg = _load(args.config, args.set)
    if args.dry_run:
        from .experiment import dry_run

        plan = dry_run(cfg)
        print(plan, flush=True)
        if plan.missing is not None:
            raise ValueError(f"dry run: {plan.missing}")
        return 0
    folder = RunFolder(args.out if args.out is not None else default_run_dir(cfg))
    if args.resume and not folder.exists():
        raise FileNotFoundError(f"nothing to resume in {folder.path}: no run was started there "
                                "(leave out --resume to start one)")  # fmt: skip
    run_experiment(cfg, folder.path)
    return 0


def _compare(config: str | None, overrides: list[str], methods: str, sparsity: str | None, seeds: str,
             out: str | None, grid: list[str], speedup: str | None = None, jobs: int = 1,
             engine: argparse.Namespace | None = None) -> int:  # fmt: skip
    from . import tracking
    from .compare import parse_grid, run_grid
    from .config import ConfigError

    if jobs != 1 and platform.launched():
        raise ConfigError(f"--jobs {jobs} and --nproc do not combine: a distributed grid runs its cells one after "
                          "another (give one of them)")  # fmt: skip
    _check_engine(engine)
    cfg = _load(config, overrides)
    if speedup is not None and sparsity is not None:
        raise ConfigError("give --sparsity or --speedup, not both (one budget per comparison)")
    if speedup is not None and cfg.prune.granularity != "channel":
        raise ConfigError("--speedup needs prune.granularity: channel (--set prune.granularity=channel)")
    if sparsity is None:
        sparsity = "0.9,0.98" if cfg.prune.speedup is None or speedup is not None else None
    speedups = _floats(speedup, "--speedup") if speedup is not None else (
        [cfg.prune.speedup] if sparsity is None and cfg.prune.speedup is not None else None)  # fmt: skip
    out_dir = Path(out) if out else Path("runs") / f"compare-{cfg.name}-{cfg.digest()}"
    if engine is not None and engine.executor != "local":  # a cluster's workers need not share this directory
        out_dir = out_dir.absolute()
    executor = _executor(engine, jobs, out_dir)
    tracking.grid_store(cfg.track, out_dir, cfg.name)  # MLflow's default store: the output folder
    nproc = (getattr(engine, "nproc", None) or 1) if engine is not None and engine.executor != "local" else 1
    _, table, failed = run_grid(cfg, _methods(methods, cfg.prune.granularity), _floats(sparsity or "0", "--sparsity"),
                                _ints(seeds, "--seeds"), out_dir, parse_grid(grid), speedups, executor,
                                nproc)  # fmt: skip
    if platform.current().is_primary:
        if table:
            print(table)
            print(f"wrote {out_dir / 'table.md'} and {out_dir / 'table.csv'}")
            tracking.log_grid_artifacts(cfg.track, cfg.name, out_dir)
        return _report_failed(failed)
    return 1 if failed else 0


def _check_engine(args: argparse.Namespace | None) -> None:
    """Refuse, in one line, an unknown ``--executor`` or an option of another executor than the one chosen."""
    if args is None:
        return
    name = args.executor
    if name not in ("local", "ray", "slurm"):
        raise ValueError(f"--executor must be local, ray or slurm, got {name!r}")
    slurm = [f for f, v in (("--slurm-partition", args.slurm_partition), ("--slurm-time", args.slurm_time),
                            ("--runs-per-job", args.runs_per_job)) if v is not None]  # fmt: skip
    if slurm and name != "slurm":
        raise ValueError(f"{slurm[0]} is a Slurm option: it needs --executor slurm (the executor is {name})")
    if args.ray_address is not None and name != "ray":
        raise ValueError(f"--ray-address needs --executor ray (the executor is {name})")
    if args.gpus_per_run is not None and name == "local":
        raise ValueError("--gpus-per-run needs --executor ray or slurm (local runs take train.device)")
    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if name != "local" and platform.launched():  # --nproc with ray or slurm: torchrun runs inside each task
        raise ValueError(f"--executor {name} does not run under torchrun: give --nproc N to run each run as N "
                         "processes inside its task")  # fmt: skip


def _executor(args: argparse.Namespace | None, jobs: int, out: Path) -> Executor:
    """Return the executor ``--executor`` names (default local: ``--jobs`` processes); Slurm logs: out/slurm_logs."""
    from .executors import Sequential, executor_for

    _check_engine(args)
    name = args.executor if args is not None else "local"
    if name == "ray":
        from .executors_ray import RayExecutor

        return RayExecutor(address=args.ray_address, gpus_per_run=args.gpus_per_run or 0, jobs=jobs)
    if name == "slurm":
        from .executors_slurm import SlurmExecutor

        return SlurmExecutor(out / "slurm_logs", partition=args.slurm_partition, time_min=args.slurm_time,
                             gpus_per_run=args.gpus_per_run or 0, runs_per_job=args.runs_per_job or 1, jobs=jobs)
    return executor_for(jobs) if not platform.launched() else Sequential(catch=False)


def _report_failed(failed: list[Failed]) -> int:
    """Print one ``causalprune: error:`` line per failed cell; return the exit status (1 if any failed, else 0)."""
    for f in failed:
        print(f"causalprune: error: {f}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.jobs != 1 and args.nproc is not None and args.nproc > 1 and args.executor == "local":
        raise ValueError(f"--jobs {args.jobs} and --nproc {args.nproc} do not combine: a distributed grid runs its "
                         "cells one after another (give one of them)")  # fmt: skip
    _check_engine(args)
    launched = _launch(args) if args.executor == "local" else None  # ray, slurm: torchrun inside each task
    if launched is not None:
        return launched
    return _compare(args.config, args.set, args.methods, args.sparsity, args.seeds, args.out, args.grid,
                    args.speedup, args.jobs, args)


def _cmd_report(args: argparse.Namespace) -> int:
    from .compare import collect, write_table

    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    skipped: list[str] = []
    summaries = collect(folder, skipped)
    if not summaries and skipped:
        raise ValueError(f"no readable finished runs under {folder}: {len(skipped)} damaged, e.g. {skipped[0]}")
    if not summaries:
        raise ValueError(f"no finished runs (summary.json) under {folder}")
    for line in skipped:
        print(f"causalprune: warning: skipping {line}", file=sys.stderr)
    seeds = sorted({s["seed"] for s in summaries})
    damaged = f" ({len(skipped)} damaged, skipped)" if skipped else ""
    header = f"{folder}: {len(summaries)} finished runs{damaged}, seeds {','.join(map(str, seeds))}\n\n"
    print(write_table(summaries, folder, header, html=args.html))
    page = f" and {folder / 'report.html'}" if args.html else ""
    print(f"wrote {folder / 'table.md'}, {folder / 'table.csv'}, {folder / 'figures'}{page}")
    for line in (folder / "figures" / "skipped.txt").read_text().splitlines():
        print(f"  {line}")  # a figure with nothing to show
    return 0


def _cmd_friedman(args: argparse.Namespace) -> int:
    import json

    from .analysis.friedman import run_friedman

    r = run_friedman(instances=args.instances, seed=args.seed, noise=args.noise, out=args.out)
    print(json.dumps(r["summary"], indent=2))
    print(f"{args.instances} instances in {r['time_s']} s; wrote {Path(args.out) / 'friedman.json'} and friedman.png")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.runs import analyze_run, compare_figures, run_name

    chosen = [args.hessian, args.flatness, args.landscape, args.histogram]
    if not any(chosen):  # nothing named: do everything
        chosen = [True] * 4
    results = []
    out = Path(args.out)
    names = [run_name(Path(d)) for d in args.run_dirs]
    if len(set(names)) < len(names):  # two runs whose last path parts agree: number them
        names = [f"{i}_{n}" for i, n in enumerate(names)]
    for d, name in zip(args.run_dirs, names, strict=True):
        print(f"analyzing {d}", flush=True)
        results.append(analyze_run(Path(d), out / name, *chosen, samples=args.samples, draws=args.draws))
    compare_figures(results, out)
    for r in results:
        eig = r.get("hessian", {}).get("top_eigenvalues")
        rel = r.get("flatness", {}).get("relative_loss")
        budget = f"speed-up {r['budget']}" if r.get("speedup_target") is not None else f"sparsity {r['budget']}"
        print(f"{r['method']:>12s} {budget:<14s} seed {r['seed']}: "
              f"top eigenvalue {eig[0] if eig else float('nan'):.4g}, "
              f"relative loss at largest σ {rel[-1] if rel else float('nan'):.4g}")  # fmt: skip
    print(f"wrote per-run results and figures under {args.out}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from . import tracking
    from .compare import collect, write_table
    from .sweep import load_sweep, run_sweep

    _check_engine(args)  # executor options before the sweep file: one line, nothing read or submitted
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.sweep).stem}"
    if args.executor != "local":  # a cluster's workers need not share this directory
        out = out.absolute()
    tracking.grid_store(_tracks(args), out, load_sweep(args.sweep)[1])  # MLflow's default store: the output folder
    n, failed = run_sweep(args.sweep, out, jobs=args.jobs, executor=_executor(args, args.jobs, out),
                          overrides=_track_set(args))  # fmt: skip
    summaries = collect(out)
    if summaries:
        done = f"{n} runs" if not failed else f"{n} runs ({len(failed)} failed)"
        print(write_table(summaries, out, f"{args.sweep}: {done}\n\n"))
        tracking.log_grid_artifacts(_tracks(args), load_sweep(args.sweep)[1], out)
    return _report_failed(failed)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    r = export_run(args.run_dir, args.format, args.out, semi_structured=args.semi_structured)
    files = ", ".join(f"{p} ({f['bytes']} bytes)" for p, f in zip(r["paths"], r["files"], strict=True))
    print(f"wrote {files} and the sidecar {r['file']}.json (input shape {tuple(r['input_shape'])} {r['input_dtype']})")
    if "static_batch_reason" in r:
        print(f"batch fixed to {r['example_batch']}: {r['static_batch_reason']}")
    if "check" in r:
        print(f"onnx: {r['check']}")
    if "note" in r:
        print(f"note: {r['note']}")
    if "semi_structured" in r:
        dense = "; ".join(f"{k}: {v}" for k, v in r["kept_dense"].items()) or "none"
        print(f"semi-structured 2:4 ({r['dtype']}): {', '.join(r['semi_structured']) or 'none'}; kept dense: {dense}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return _compare(None, args.set, DEMO["methods"], DEMO["sparsity"], DEMO["seeds"], args.out, [])


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config file, or a shipped config's name (causalprune list); default: the demo config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set prune.sparsity=0.98 (repeatable)")  # fmt: skip


def _add_track_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--track", default=None, metavar="tensorboard,mlflow",
                   help="also record every run's events in these trackers (config key track; "
                        "pip install 'causalprune[track]')")  # fmt: skip


def _track_set(args: argparse.Namespace) -> list[str]:
    """Return the ``--set`` override that ``--track`` stands for (none without it)."""
    if getattr(args, "track", None) is None:
        return []
    return [f"track=[{','.join(_tracks(args))}]"]


def _tracks(args: argparse.Namespace) -> list[str]:
    """Return the trackers ``--track`` names."""
    return [t.strip() for t in (getattr(args, "track", None) or "").split(",") if t.strip()]


def _add_executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="local", metavar="local|ray|slurm",
                   help="where the runs run: local (--jobs processes here, the default), ray (one Ray task per run; "
                        "pip install 'causalprune[ray]'), slurm (submitit jobs; pip install 'causalprune[slurm]')")
    p.add_argument("--gpus-per-run", type=float, default=None, metavar="G",
                   help="GPUs each run reserves (ray, slurm; default 0)")
    p.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="join this Ray cluster (ray://host:port, host:port or auto); default: start a local Ray")
    p.add_argument("--slurm-partition", default=None, help="Slurm partition (slurm; default: the cluster's)")
    p.add_argument("--slurm-time", type=int, default=None, metavar="MIN",
                   help="time limit of each Slurm job in minutes (slurm)")
    p.add_argument("--runs-per-job", type=int, default=None, metavar="K",
                   help="runs per Slurm job, one after another in it (slurm; default 1)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `causalprune` command."""
    parser = argparse.ArgumentParser(prog="causalprune", description="Causal Pruning and its baselines.")
    parser.add_argument("--version", action="version", version=f"causalprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one experiment (Algorithm 1) into a resumable run folder")
    _add_config_args(p)
    _add_track_arg(p)
    p.add_argument("--out", default=None, help="run folder (default: runs/<name>-<hash>/seed_<n>)")
    p.add_argument("--resume", action="store_true",
                   help="only continue an interrupted run: refuse to start a new one (re-running the same "
                        "command without it also continues)")  # fmt: skip
    p.add_argument(
        "--dry-run", action="store_true", help="resolve the config, build the model, check the data; train nothing"
    )
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="run as N processes on this machine (data parallel): the same as "
                        "torchrun --standalone --nproc-per-node N -m causalprune run ...")  # fmt: skip
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("compare", help="run methods × sparsities × seeds and print a table")
    _add_config_args(p)
    _add_track_arg(p)
    p.add_argument("--out", default=None, help="folder for the runs and table.md / table.csv")
    p.add_argument("--methods", default="causal,magnitude,random", help="comma list, or 'all'")
    p.add_argument("--sparsity", default=None, help="comma list of final sparsities (default 0.9,0.98)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="run every cell as N processes (data parallel; see run --nproc): here, or with "
                        "--executor ray|slurm inside each cell's task, which reserves N x train.threads CPUs")
    p.add_argument("--speedup", default=None,
                   help="comma list of MACs reductions, instead of --sparsity (prune.granularity: channel)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="also vary a config key, e.g. --grid causal.solver=cd,sgd (repeatable)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N cells at once, each in its own process, sharing the cores (default 1: one after "
                        "another)")  # fmt: skip
    _add_executor_args(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("demo", help="the built-in demo: MNIST-1D MLP, causal vs magnitude vs random")
    p.add_argument("--out", default="runs/demo", help="folder for the runs and table.md (default runs/demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("analyze", help="Hessian spectrum, flatness, landscape and weight histograms of runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders")
    p.add_argument("--hessian", action="store_true", help="top Hessian eigenvalues and trace")
    p.add_argument("--flatness", action="store_true", help="loss under random perturbation (eq. 16-17)")
    p.add_argument("--landscape", action="store_true", help="2-D loss surface")
    p.add_argument("--histogram", action="store_true", help="histogram of the remaining weights")
    p.add_argument("--samples", type=int, default=512, help="training samples the analyses evaluate (default 512)")
    p.add_argument("--draws", type=int, default=100, help="perturbations per σ for --flatness (default 100)")
    p.add_argument("--out", default="runs/analysis",
                   help="folder for per-run results (one sub-folder per run) and comparison figures "
                        "(default runs/analysis); the run folders are only read")  # fmt: skip
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("friedman", help="the paper's Fig. 1: causal coefficients vs Lasso on Friedman #1")
    p.add_argument("--instances", type=int, default=1000, help="data instantiations (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=1.0, help="Friedman noise standard deviation (default 1.0)")
    p.add_argument("--out", default="runs/friedman", help="output folder (default runs/friedman)")
    p.set_defaults(func=_cmd_friedman)

    p = sub.add_parser("sweep", help="run a grid of configs (SWEEP.yaml) in parallel processes, resumably")
    p.add_argument("sweep", help="sweep file (base, name, set, grid), or a shipped sweep's name")
    _add_track_arg(p)
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N runs at once, each in its own process, sharing the cores (default 1)")
    p.add_argument("--out", default=None, help="output folder (default runs/sweep-<name>)")
    _add_executor_args(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="turn the finished run folders under a folder into table.md / table.csv")
    p.add_argument("folder", help="a compare output folder (or any folder of run folders)")
    p.add_argument("--html", action="store_true",
                   help="also write report.html: the tables and figures in one self-contained page (opens offline)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("export", help="write a finished run's model as a file that loads without causalprune")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    p.add_argument("--format", required=True, metavar="pt2|onnx|state_dict|safetensors|sparse",
                   help="pt2: torch.export program (torch.export.load(f).module()); onnx: torch.onnx.export "
                        "(needs the onnx extra: pip install 'causalprune[onnx]'); state_dict: torch.save of the "
                        "dense state dict (zeros where pruned); safetensors: the same as .safetensors; sparse: 2-D "
                        "weights as torch.sparse_csr (causalprune.formats.load_sparse reads it)")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="output file, ending in the format's suffix (.pt2, .onnx, .pt/.pth, .safetensors, .pt/.pth; "
                        "default RUN_DIR/model.pt2, model.onnx, state_dict.pt, model.safetensors or sparse_csr.pt); "
                        "a sidecar FILE.json lists every file written with its size, the input shape and the run's "
                        "efficiency")  # fmt: skip
    p.add_argument("--semi-structured", action="store_true",
                   help="format state_dict of a prune.pattern \"2:4\" run: its pruned Linear weights as "
                        "torch.sparse.to_sparse_semi_structured tensors in float16 (2:4 only; needs a CUDA device "
                        "of compute capability 8.0+, else refused in one line)")  # fmt: skip
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("list", help="list models, data sets, methods, solvers, loss changes, schedules")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `causalprune` command line; return the exit status."""
    from . import launch

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "set", None) is not None:
        args.set = [*args.set, *_track_set(args)]  # --track: the config key track of every run
    shown = warnings.showwarning
    warnings.showwarning = _warning_line
    finished = False
    try:
        if platform.launched():  # one of torchrun's processes: its log (under --nproc), then the process group
            launch.capture_output()
            platform.init_from_env()
        code = int(args.func(args))
        finished = True
        return code
    except KeyboardInterrupt:
        if launch.rank_folder() is None:  # under --nproc the launcher says it
            print("causalprune: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        failed = _failed(e)
        if failed is None:
            raise
        return failed
    finally:
        warnings.showwarning = shown
        platform.shutdown(wait=finished)  # after an error a rank may be gone: do not wait for the others


def _failed(error: Exception) -> int | None:
    """Say in one line why the command failed and return its exit status; None: a bug, for a traceback.

    Bad input (exit status 2) comes first, unless a collective failed because another rank is gone
    (exit status 1: the run resumes). Under ``--nproc`` any other exception is a rank's crash: its
    traceback goes to the rank's log and the launcher names it.
    """
    from . import launch
    from .runfolder import RunFolderError
    from .train import TrainingDiverged

    if platform.launched() and platform.lost_peer(error):  # a lost rank: the others fail at their next collective
        _error(f"another process of the run failed or was lost ({type(error).__name__}); re-run the same command "
               "to resume", launch.LOST, error)  # fmt: skip
        return 1
    if isinstance(error, ValueError | RunFolderError | TrainingDiverged | platform.DistributedError):
        _error(str(error))
        return 2
    if isinstance(error, OSError):  # missing files, permissions, a full disk: one line naming the file
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        _error(f"{error.strerror or error}{where}")
        return 2
    if launch.leave_record(launch.CRASH, f"{type(error).__name__}: {error}", error):
        return 1
    return None


def _error(message: str, kind: str = "input", error: BaseException | None = None) -> None:
    """Print ``causalprune: error: <message>`` as one line on stderr, ``[rank r]`` first in a distributed run.

    Under torchrun every rank prints its own line. Under ``--nproc`` no rank prints: each leaves
    its line, classified as `kind` (``launch.INPUT``, ``CRASH`` or ``LOST``), for the launcher,
    which prints one line for the whole run (`launch.verdict`).
    """
    from . import launch

    if not launch.leave_record(kind, message, error):
        print(f"causalprune: error: {_rank()}{message}", file=sys.stderr)


def _rank() -> str:
    """``[rank r] `` in a distributed run (every rank prints its own errors), else nothing."""
    from . import launch

    rank = launch.rank_number()
    return f"[rank {rank}] " if rank is not None else ""


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:  # fmt: skip
    """Show a warning (a Lasso that did not converge, the layer-collapse guard) as one line on stderr."""
    print(f"causalprune: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
