"""``ablate check``: every setting's command line goes through the program's parser, nothing is trained.

A renamed option or a mistyped value then fails here, in seconds on a laptop, rather than hours into a GPU
sweep (the same idea as the test that instantiates every ``configs/*.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from common.ablation.runner import build_args, program_main
from common.ablation.spec import Sweep


def check_sweep(sweep: Sweep, extra: Sequence[str] = ()) -> dict[str, str]:
    """Parse each setting's arguments with the program's LightningCLI parser; return ``{setting: problem}``."""
    from jsonargparse import ArgumentError

    parser = _parser(sweep.program, sweep.base)
    problems = {}
    for setting in sweep.settings:
        try:
            parser.parse_args(build_args(sweep, setting, extra=extra))
        except ArgumentError as e:
            problems[setting.name] = " ".join(line.strip() for line in str(e).splitlines() if line.strip())[:400]
    return problems


@lru_cache(maxsize=8)
def _parser(program: str, base: Path) -> Any:
    """The program's fully built parser (model, data subclasses, trainer), from one CLI object per base config."""
    cli = program_main(program)(["--config", str(base), "--trainer.logger=false"], run_cli=False)
    cli.parser.exit_on_error = False  # errors raise ArgumentError instead of exiting
    return cli.parser
