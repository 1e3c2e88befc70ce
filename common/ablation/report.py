"""Collect a sweep's ``result.json`` files into one markdown table and plots like the papers' figures.

Per sweep, in ``<output>/<group>/``: ``report.md`` (rows = settings; columns = the sweep's report metrics,
trainable %, seconds per epoch, peak memory, status), ``bars.png`` (per-task bars: one panel per task/prompt,
one bar per setting) and, when the settings vary a numeric option, ``vs_<option>.png`` (metric vs r, metric vs
n: one panel per task, one line per metric). No W&B account is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.ablation.runner import DEFAULT_OUTPUT, cli_value, read_result, run_dir
from common.ablation.spec import Sweep
from common.io import write_text


def collect(sweep: Sweep, output: Path = DEFAULT_OUTPUT) -> list[dict[str, Any]]:
    """Each setting's result in the sweep file's order; a setting not run yet has ``status: missing``."""
    rows = []
    for setting in sweep.settings:
        result = read_result(run_dir(sweep, setting, output) / "result.json")
        rows.append(result or {"setting": setting.name, "status": "missing", "overrides":
                               sweep.overrides_for(setting), "x": sweep.x_for(setting)})
    return rows


def metric_names(sweep: Sweep, results: Sequence[dict[str, Any]]) -> list[str]:
    """The report's metrics: the sweep's list, else every metric any run reported (counts ``n`` left out)."""
    if sweep.report.metrics:
        return list(sweep.report.metrics)
    seen: dict[str, None] = {}
    for r in results:
        for k in r.get("metrics", {}):
            if not (k == "n" or k.endswith("/n") or k.startswith("n_") or "/n_" in k or k.endswith("_std")):
                seen[k] = None
    return list(seen)


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _x_label(sweep: Sweep) -> str:
    return sweep.report.x_label or sweep.report.x or "x"


def table(sweep: Sweep, results: Sequence[dict[str, Any]]) -> str:
    """The markdown table: one row per setting."""
    metrics = metric_names(sweep, results)
    has_x = any(r.get("x") is not None for r in results)
    head = ["setting", *([_x_label(sweep)] if has_x else []), *metrics, "trainable %", "s/epoch", "peak MB",
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        m = r.get("metrics", {})
        x = r.get("x")
        cells = [f"`{r['setting']}`", *([_fmt(x, 0 if x is not None and float(x).is_integer() else 2)]
                                        if has_x else [])]
        cells += [_fmt(m.get(k), 4) for k in metrics]
        cells += [_fmt(r.get("trainable_pct"), 2), _fmt(r.get("epoch_seconds"), 1),
                  _fmt(r.get("peak_memory_mb"), 0), r.get("status", "?")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _task(metric: str) -> tuple[str, str]:
    """``A-3/NDCG@5`` -> (``A-3``, ``NDCG@5``); a metric without a prompt belongs to one unnamed panel."""
    return tuple(metric.split("/", 1)) if "/" in metric else ("", metric)


def _panels(metrics: Sequence[str]) -> dict[str, list[str]]:
    """Plot panels: one per task prefix (``A-3``: its metrics); a metric without a prefix gets its own panel."""
    panels: dict[str, list[str]] = {}
    for m in metrics:
        task, name = _task(m)
        panels.setdefault(task or name, []).append(m)
    return panels


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text.split(".")[-1]).strip("_").lower() or "x"


def plot_bars(sweep: Sweep, results: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Per-task bar charts: a panel per task (prompt) with its metrics on the x axis, or per metric for metrics
    without a task (PMG); a bar per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if r.get("status") == "ok"]
    panels = _panels(metric_names(sweep, done))
    if not done or not panels:
        return None
    widths = [max(2.4, 0.8 + 0.22 * len(done) * len(ms)) for ms in panels.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1.5, 3.4), squeeze=False, layout="constrained",
                             gridspec_kw={"width_ratios": widths})
    width = 0.8 / len(done)
    colors = plt.get_cmap("tab10").colors
    for ax, (title, metrics) in zip(axes[0], panels.items()):
        for j, r in enumerate(done):
            values = [r["metrics"].get(m, float("nan")) for m in metrics]
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(metrics))]
            ax.bar(xs, values, width=width * 0.95, color=colors[j % len(colors)], label=r["setting"])
        names = [_task(m)[1] for m in metrics]
        if names == [title]:  # a panel per metric: the title names it, the legend the bars
            ax.set_xticks([])
        else:
            ax.set_xticks(range(len(metrics)), names)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside right upper")
    fig.suptitle(sweep.report.title or sweep.group, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_lines(sweep: Sweep, results: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Metric vs a numeric option (r, n, L): a panel per task, a line per metric; None with < 2 x values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted((r for r in results if r.get("status") == "ok" and r.get("x") is not None), key=lambda r: r["x"])
    if len({r["x"] for r in done}) < 2:
        return None
    panels = _panels(metric_names(sweep, done))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.4), squeeze=False, layout="constrained")
    xs = [r["x"] for r in done]
    for ax, (title, metrics) in zip(axes[0], panels.items()):
        for m in metrics:
            ax.plot(xs, [r["metrics"].get(m, float("nan")) for r in done], marker="o", label=_task(m)[1])
        if sweep.report.x_scale == "log2":
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(_x_label(sweep))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(sweep.report.title or sweep.group, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def section(sweep: Sweep, results: Sequence[dict[str, Any]], plots: Sequence[Path], relative_to: Path) -> str:
    """The markdown for one sweep: description, table, plots and the runs' overrides and W&B folders."""
    lines = [f"## {sweep.group}", ""]
    if sweep.description:
        lines += [sweep.description, ""]
    lines += [f"Sweep file `{sweep.path}`, program `{sweep.program}`, base config `{sweep.base.name}`.", "",
              table(sweep, results), ""]
    lines += [f"![{p.stem}]({p.relative_to(relative_to).as_posix()})" for p in plots]
    if sweep.overrides:
        lines += ["", "Every setting: " + " ".join(f"`{k}={cli_value(v)}`" for k, v in sweep.overrides.items()) + "."]
    lines += ["", "| setting | overrides | tags | W&B run |", "|---|---|---|---|"]
    for r in results:
        own = {k: v for k, v in (r.get("overrides") or {}).items()
               if k not in sweep.overrides or sweep.overrides[k] != v}
        overrides = " ".join(f"`{k}={cli_value(v)}`" for k, v in own.items()) or "(base)"
        if r.get("fit") is False:
            overrides += " (test only)"
        note = f" ({r['error']})" if r.get("status") == "failed" and r.get("error") else ""
        lines.append(f"| `{r['setting']}` | {overrides}{note} | {', '.join(r.get('tags') or []) or '–'} | "
                     f"{r.get('wandb_run') or '–'} |")
    return "\n".join(lines) + "\n"


def write_report(sweep: Sweep, output: Path = DEFAULT_OUTPUT) -> tuple[Path, str, list[Path]]:
    """Write ``<output>/<group>/report.md`` and its plots; return (path, the sweep's markdown section, plots)."""
    folder = Path(output) / sweep.group
    results = collect(sweep, output)
    plots = [p for p in (plot_bars(sweep, results, folder / "bars.png"),
                         plot_lines(sweep, results, folder / f"vs_{_slug(sweep.report.x or 'x')}.png")) if p]
    text = section(sweep, results, plots, folder)
    path = folder / "report.md"
    write_text(path, f"# Ablation report: {sweep.group}\n\n{text}")
    return path, section(sweep, results, plots, Path(output)), plots


def write_reports(sweeps: Sequence[Sweep], output: Path = DEFAULT_OUTPUT) -> Path:
    """One report per sweep and, for several sweeps, ``<output>/report.md`` with all of them."""
    parts = [write_report(s, output) for s in sweeps]
    if len(parts) == 1:
        return parts[0][0]
    path = Path(output) / "report.md"
    write_text(path, "# Ablation reports\n\n" + "\n".join(section for _, section, _ in parts))
    return path
