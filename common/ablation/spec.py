"""Sweep files: an ablation is a base config plus a list of settings, each a set of CLI overrides.

A sweep file (``configs/ablations/*.yaml``) is data, not code::

    program: vip5                      # vip5 | pmg
    base: ../beauty.yaml               # a config, relative to this file; `default` = the embedded default
    group: vip5-rq2-reduction          # W&B group and output folder; default: the file name
    description: VIP5 RQ2 ...
    tags: [vip5, rq2]                  # on every run
    overrides:                         # on every run (dotted CLI keys -> values)
      trainer.max_epochs: 20
    settings:
      - name: r8
        tags: [r8]
        overrides: {model.net.adapter.reduction_factor: 8}
    report:
      metrics: [A-3/NDCG@5, B-5/NDCG@5, C-3/BLEU-4]   # flat result keys: <prompt>/<metric> or <metric>
      x: model.net.adapter.reduction_factor            # numeric override plotted on the x axis (metric vs r)
      x_label: reduction factor r
      x_scale: log2

Each setting runs ``<program> fit`` then ``<program> test`` with ``--config <base>``, the sweep's overrides, the
setting's overrides and any extra command-line arguments, in that order (later ones win). Unknown keys in the
file are errors naming the file and the field; the overrides themselves are checked against the program's
parser by ``ablate check``.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PROGRAMS = ("vip5", "pmg")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_+]*)*$")
# set by the runner for every run (output folders, W&B identity); a sweep cannot override them
RESERVED_KEYS = ("trainer.default_root_dir", "trainer.logger", "trainer.callbacks", "ckpt_path")

_TOP_KEYS = {"program", "base", "group", "description", "project", "tags", "overrides", "settings", "report"}
_SETTING_KEYS = {"name", "description", "tags", "overrides", "x", "fit"}
_REPORT_KEYS = {"metrics", "x", "x_label", "x_scale", "title"}


class SweepError(ValueError):
    """A malformed sweep file; the message names the file and the field."""


@dataclass(frozen=True)
class Setting:
    """One run of a sweep.

    Attributes:
        name: folder and W&B run name (letters, digits, ``._+=-``), unique within the sweep.
        overrides: dotted CLI keys -> values, applied after the sweep's common overrides.
        tags: W&B tags of this run (added to the sweep's).
        description: a line for the report.
        x: value on the report's x axis; default: the value of ``report.x`` in the run's overrides.
        fit: False runs ``test`` only (e.g. PMG without soft embeddings has nothing to train).
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    description: str = ""
    x: float | None = None
    fit: bool = True


@dataclass(frozen=True)
class ReportSpec:
    """What the report tabulates and plots.

    Attributes:
        metrics: flat result keys shown in the table and plots (``A-3/NDCG@5``, ``lpips_target``); empty = all.
        x: dotted override key whose numeric value is the x axis of the line plot (metric vs r, metric vs n).
        x_label: axis label; default ``x``.
        x_scale: ``linear`` or ``log2`` (reduction factors).
        title: figure title; default the sweep's description.
    """

    metrics: tuple[str, ...] = ()
    x: str | None = None
    x_label: str | None = None
    x_scale: Literal["linear", "log2"] = "linear"
    title: str | None = None


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file (see the module docstring for the format)."""

    path: Path
    program: Literal["vip5", "pmg"]
    base: Path
    group: str
    settings: tuple[Setting, ...]
    description: str = ""
    project: str | None = None
    tags: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    report: ReportSpec = ReportSpec()

    def setting(self, name: str) -> Setting:
        """The setting called ``name``; an unknown name lists the valid ones."""
        for s in self.settings:
            if s.name == name:
                return s
        raise SweepError(f"{self.path}: no setting {name!r}; settings: {', '.join(s.name for s in self.settings)}")

    def overrides_for(self, setting: Setting) -> dict[str, Any]:
        """The sweep's common overrides updated with the setting's (the setting wins)."""
        return {**self.overrides, **setting.overrides}

    def tags_for(self, setting: Setting) -> list[str]:
        """W&B tags of a run: the sweep's, then the setting's, without repeats."""
        return list(dict.fromkeys([*self.tags, *setting.tags]))

    def x_for(self, setting: Setting) -> float | None:
        """The setting's x-axis value (explicit ``x`` or its value of ``report.x``), or None."""
        if setting.x is not None:
            return setting.x
        value = self.overrides_for(setting).get(self.report.x) if self.report.x else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def default_config(program: str) -> Path:
    """The embedded default config of ``program`` (``vip5/default.yaml``, ``pmg/default.yaml``)."""
    return Path(importlib.import_module(program).__file__).with_name("default.yaml")


def _fail(path: Path, where: str, problem: str) -> SweepError:
    return SweepError(f"{path}: {where}: {problem}")


def _check_keys(path: Path, where: str, data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(path, where, f"unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                                 f"{', '.join(sorted(allowed))}")


def _tags(path: Path, where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, (str, int, float)) for t in value):
        raise _fail(path, where, "expected a list of strings")
    return tuple(str(t) for t in value)


def _overrides(path: Path, where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, where, f"expected a mapping of dotted CLI keys to values, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str) or not _KEY.match(key):
            raise _fail(path, f"{where}.{key}", "keys are dotted CLI option names without dashes, "
                                                 "e.g. model.net.n_image_tokens")
        if any(key == r or key.startswith(r + ".") for r in RESERVED_KEYS):
            raise _fail(path, f"{where}.{key}", f"set by the sweep runner for every run (reserved: "
                                                 f"{', '.join(RESERVED_KEYS)})")
    return dict(value)


def _setting(path: Path, i: int, raw: Any) -> Setting:
    where = f"settings[{i}]"
    if not isinstance(raw, dict):
        raise _fail(path, where, "expected a mapping with name, overrides, tags")
    _check_keys(path, where, raw, _SETTING_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(path, f"{where}.name", f"expected a name of letters, digits and ._+=- (got {name!r})")
    x = raw.get("x")
    if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
        raise _fail(path, f"{where}.x", f"expected a number, got {x!r}")
    fit = raw.get("fit", True)
    if not isinstance(fit, bool):
        raise _fail(path, f"{where}.fit", f"expected true or false, got {fit!r}")
    return Setting(
        name=name,
        overrides=_overrides(path, f"{where}.overrides", raw.get("overrides")),
        tags=_tags(path, f"{where}.tags", raw.get("tags")),
        description=str(raw.get("description") or ""),
        x=None if x is None else float(x),
        fit=fit,
    )


def _report(path: Path, raw: Any) -> ReportSpec:
    if raw is None:
        return ReportSpec()
    if not isinstance(raw, dict):
        raise _fail(path, "report", "expected a mapping")
    _check_keys(path, "report", raw, _REPORT_KEYS)
    metrics = raw.get("metrics") or []
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise _fail(path, "report.metrics", "expected a list of result keys such as A-3/NDCG@5")
    scale = raw.get("x_scale", "linear")
    if scale not in ("linear", "log2"):
        raise _fail(path, "report.x_scale", f"expected linear or log2, got {scale!r}")
    x = raw.get("x")
    if x is not None and not isinstance(x, str):
        raise _fail(path, "report.x", "expected a dotted override key")
    return ReportSpec(metrics=tuple(metrics), x=x, x_label=raw.get("x_label"), x_scale=scale,
                      title=raw.get("title"))


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file. Errors are :class:`SweepError` naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise _fail(path, "top level", "expected a mapping")
    _check_keys(path, "top level", raw, _TOP_KEYS)
    program = raw.get("program")
    if program not in PROGRAMS:
        raise _fail(path, "program", f"expected one of {', '.join(PROGRAMS)}, got {program!r}")
    base_name = raw.get("base", "default")
    if not isinstance(base_name, str):
        raise _fail(path, "base", "expected a config path or `default`")
    base = default_config(program) if base_name == "default" else (path.parent / base_name)
    if not base.is_file():
        raise _fail(path, "base", f"config {base} does not exist (paths are relative to the sweep file)")
    group = raw.get("group") or path.stem.replace("_", "-")
    if not isinstance(group, str) or not _NAME.match(group):
        raise _fail(path, "group", f"expected a name of letters, digits and ._+=- (got {group!r})")
    settings = raw.get("settings")
    if not isinstance(settings, list) or not settings:
        raise _fail(path, "settings", "expected a non-empty list of settings")
    parsed = tuple(_setting(path, i, s) for i, s in enumerate(settings))
    names = [s.name for s in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise _fail(path, "settings", f"repeated setting name(s) {', '.join(repeated)}")
    project = raw.get("project")
    if project is not None and not isinstance(project, str):
        raise _fail(path, "project", "expected a W&B project name")
    return Sweep(
        path=path,
        program=program,
        base=base.resolve(),
        group=group,
        settings=parsed,
        description=str(raw.get("description") or "").strip(),
        project=project,
        tags=_tags(path, "tags", raw.get("tags")),
        overrides=_overrides(path, "overrides", raw.get("overrides")),
        report=_report(path, raw.get("report")),
    )
