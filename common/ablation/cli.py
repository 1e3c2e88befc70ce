"""ablate: run ablation sweeps, emit W&B sweep definitions, and report.

    ablate run configs/ablations/vip5_rq2_reduction.yaml            # every setting, one after another
    ablate run configs/ablations/demo_vip5.yaml -- --trainer.max_epochs 1   # extra args go to every run
    ablate check configs/ablations/*.yaml                           # parse every setting, train nothing
    ablate wandb-sweep configs/ablations/vip5_rq2_reduction.yaml > sweep.yaml   # for `wandb sweep` + agents
    ablate report configs/ablations/vip5_rq2_reduction.yaml        # table + plots from the result files
    ablate run-setting configs/ablations/vip5_rq2_reduction.yaml --setting r8   # one setting (agents, DDP)

Arguments after ``--`` are passed to every run's ``vip5``/``pmg`` command line (they win over the sweep file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.ablation.spec import SweepError, load_sweep

DEFAULT_OUTPUT = "outputs/ablations"


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first ``--``: (ablate's own arguments, extra arguments for every run)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablate", description=__doc__.split("\n\nArguments")[0].strip(),
        epilog="Sweep files: configs/ablations/*.yaml (format: common/ablation/spec.py). Arguments after `--` go "
               "to every run, e.g. `-- --trainer.devices 8 --trainer.strategy ddp --trainer.num_nodes 2`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def output(p: argparse.ArgumentParser) -> None:
        p.add_argument("--output", type=Path, default=Path(DEFAULT_OUTPUT),
                       help=f"root folder of results, checkpoints and W&B runs (default {DEFAULT_OUTPUT})")

    p = sub.add_parser("run", help="run sweeps' settings one after another (resumable), then write the report")
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep files")
    output(p)
    p.add_argument("--only", default="", help="comma-separated setting names to run (default: all)")
    p.add_argument("--force", action="store_true", help="rerun settings that already have an ok result")
    p.add_argument("--in-process", action="store_true",
                   help="run settings in this process instead of one process each (faster start, shared memory)")
    p.add_argument("--verbose", action="store_true", help="stream each run's output (always in <setting>/log.txt)")
    p.add_argument("--no-report", action="store_true", help="skip writing the report at the end")

    p = sub.add_parser("run-setting", help="fit + test one setting in this process (W&B agents, DDP launchers)")
    p.add_argument("sweep", type=Path)
    p.add_argument("--setting", required=True, help="setting name")
    output(p)
    p.add_argument("--force", action="store_true", help="rerun even if its result says ok")

    p = sub.add_parser("check", help="parse every setting through the program's CLI parser, without training")
    p.add_argument("sweeps", nargs="+", type=Path)

    p = sub.add_parser("wandb-sweep", help="print a W&B sweep definition (grid over the settings) for agents")
    p.add_argument("sweep", type=Path)
    output(p)
    p.add_argument("-o", "--out", type=Path, default=None, help="write to this file instead of stdout")

    p = sub.add_parser("report", help="markdown table + plots from the result files (no W&B account needed)")
    p.add_argument("sweeps", nargs="+", type=Path)
    output(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ablate`` console script; returns the exit status."""
    own, extra = _split(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(own)
    try:
        if args.command == "run":
            return _run(args, extra)
        if args.command == "run-setting":
            return _run_setting(args, extra)
        if args.command == "check":
            return _check(args, extra)
        if args.command == "wandb-sweep":
            return _wandb_sweep(args, extra)
        if args.command == "report":
            return _report(args)
    except SweepError as e:
        print(f"ablate: error: {e}", file=sys.stderr)
        return 2
    return 2


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    from common.ablation.report import write_reports
    from common.ablation.runner import run_sweep

    sweeps = [load_sweep(p) for p in args.sweeps]  # all files are checked before anything runs
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only if not any(s.name == n for sw in sweeps for s in sw.settings)]
    if unknown:
        raise SweepError(f"--only: no setting {', '.join(unknown)} in {', '.join(map(str, args.sweeps))}")
    failed = 0
    for sweep in sweeps:
        names = [n for n in only if any(s.name == n for s in sweep.settings)] if only else []
        if only and not names:
            continue
        results = run_sweep(sweep, args.output, extra, only=names, force=args.force,
                            isolate=not args.in_process, verbose=args.verbose)
        failed += sum(r.get("status") != "ok" for r in results)
    if not args.no_report:
        print(f"report: {write_reports(sweeps, args.output)}")
    if failed:
        print(f"{failed} setting(s) failed; see their log.txt / result.json", file=sys.stderr)
    return 1 if failed else 0


def _run_setting(args: argparse.Namespace, extra: list[str]) -> int:
    from common.ablation.runner import run_dir, run_setting

    sweep = load_sweep(args.sweep)
    setting = sweep.setting(args.setting)
    result = run_setting(sweep, setting, args.output, extra, force=args.force)
    print(f"{sweep.group}/{setting.name}: {result['status']} -> {run_dir(sweep, setting, args.output)}")
    return 0 if result["status"] == "ok" else 1


def _check(args: argparse.Namespace, extra: list[str]) -> int:
    from common.ablation.check import check_sweep

    bad = 0
    for path in args.sweeps:
        sweep = load_sweep(path)
        problems = check_sweep(sweep, extra)
        for name, problem in problems.items():
            print(f"{path}: setting {name}: {problem}", file=sys.stderr)
        bad += len(problems)
        print(f"{path}: {len(sweep.settings) - len(problems)}/{len(sweep.settings)} settings parse")
    return 1 if bad else 0


def _wandb_sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from common.ablation.wandb_sweep import sweep_yaml

    text = sweep_yaml(load_sweep(args.sweep), args.sweep, args.output, extra)
    if args.out:
        from common.io import write_text

        write_text(args.out, text)
        print(f"wrote {args.out}; now `wandb sweep {args.out}` and `wandb agent <sweep id>` on each machine")
    else:
        print(text, end="")
    return 0


def _report(args: argparse.Namespace) -> int:
    from common.ablation.report import write_reports

    path = write_reports([load_sweep(p) for p in args.sweeps], args.output)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
