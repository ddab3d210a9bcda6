"""Command-line interface: thin subcommands over the library."""

from __future__ import annotations

import argparse
import sys

from . import __version__, lasso, selection, trajectory


def _cmd_list(_: argparse.Namespace) -> int:
    from .models import MODELS

    print("models:     " + ", ".join(sorted(MODELS)))
    print("solvers:    " + ", ".join(lasso.SOLVERS))
    print("delta_loss: " + ", ".join(trajectory.DELTA_LOSSES))
    print("schedules:  " + ", ".join(selection.SCHEDULES))
    print("scopes:     " + ", ".join(selection.SCOPES))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    demo.main(sparsity=args.sparsity, seed=args.seed)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the `causalprune` command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="causalprune", description="Causal Pruning and its baselines.")
    parser.add_argument("--version", action="version", version=f"causalprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list models, Lasso solvers, loss changes, schedules and scopes")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("demo", help="short library demo on scikit-learn's digits")
    p.add_argument("--sparsity", type=float, default=0.9, help="fraction of prunable weights to zero (default 0.9)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"causalprune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
