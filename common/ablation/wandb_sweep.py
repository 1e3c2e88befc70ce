"""A W&B sweep definition for a sweep file, so a fleet of ``wandb agent`` processes shares its settings.

The definition is a grid over one parameter, ``setting``; the agent runs
``python -m common.ablation run-setting <sweep.yaml> --output <dir> --setting=<name> -- <extra>`` for each
value, which fits and tests that setting in one process and one W&B run (the agent's), in the sweep's group and
with its tags, and writes the same ``result.json`` as ``ablate run``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from common.ablation.runner import DEFAULT_OUTPUT
from common.ablation.spec import Sweep


def sweep_definition(sweep: Sweep, sweep_file: str | Path, output: Path = DEFAULT_OUTPUT,
                     extra: Sequence[str] = ()) -> dict[str, Any]:
    """The ``wandb sweep`` YAML content (as a dict) for ``sweep``.

    Args:
        sweep: the parsed sweep file.
        sweep_file: the sweep file's path as the agents will see it (relative to the folder they start in).
        output: where the agents write result files and checkpoints (a shared file system gives one report).
        extra: command-line arguments for every run, e.g. ``--trainer.devices 8 --trainer.strategy ddp``.
    """
    project = sweep.project or sweep.program
    command = ["${env}", "${interpreter}", "-m", "common.ablation", "run-setting", str(sweep_file),
               "--output", str(output), "${args}"]
    if extra:
        command += ["--", *extra]
    return {
        "name": sweep.group,
        "description": sweep.description or f"{sweep.program} ablation {sweep.group}",
        "project": project,
        "method": "grid",
        "parameters": {"setting": {"values": [s.name for s in sweep.settings]}},
        "command": command,
    }


def sweep_yaml(sweep: Sweep, sweep_file: str | Path, output: Path = DEFAULT_OUTPUT,
               extra: Sequence[str] = ()) -> str:
    """:func:`sweep_definition` as YAML, with a header saying how to launch it."""
    header = (
        f"# W&B sweep for {sweep_file} (group {sweep.group}): one run per setting.\n"
        "#   wandb sweep <this file>                 # prints the sweep id\n"
        "#   wandb agent <entity>/<project>/<id>     # on each machine; agents share the grid\n"
    )
    return header + yaml.safe_dump(sweep_definition(sweep, sweep_file, output, extra), sort_keys=False)
