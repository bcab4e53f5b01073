"""Writing an evaluation report: JSON, a PNG of adaptation curves, and a Markdown table."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distributed_reptile import jsonutil
from distributed_reptile.evaluation.core import budget_axis

#: The package's JSON policy (:func:`distributed_reptile.jsonutil.to_jsonable`).
json_ready = jsonutil.to_jsonable


def write_json(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as strict JSON (NaN and infinities become ``null``); parents created."""
    return jsonutil.write_json(path, dict(report))


def plot_report(
    report: Mapping[str, Any], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Adaptation curves: mean return against budget per initialisation, shaded intervals; and the
    paired differences (reference minus each other initialisation) with their intervals.

    Needs matplotlib (``pip install "distributed-reptile[plot]"``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is in the test extra
        raise ImportError(
            'Plotting the evaluation needs matplotlib: pip install "distributed-reptile[plot]".'
        ) from exc

    xs, xlabel = budget_axis(report["budgets"])
    conf = int(round(100 * float(report["confidence"])))
    metrics = dict(report.get("metrics") or {})
    fig, axes = plt.subplots(1, 2 + len(metrics), figsize=(5.5 * (2 + len(metrics)), 4.2))
    ax_ret, ax_diff = axes[0], axes[1]
    for ax, (metric, summary) in zip(axes[2:], metrics.items(), strict=True):
        for name, init in summary["inits"].items():
            rows = init["budgets"]
            (line,) = ax.plot(xs, [r["mean"] for r in rows], marker="o", label=name)
            ax.fill_between(
                xs,
                [r["ci_low"] if r["ci_low"] is not None else math.nan for r in rows],
                [r["ci_high"] if r["ci_high"] is not None else math.nan for r in rows],
                color=line.get_color(),
                alpha=0.2,
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"mean episode {metric} on held-out tasks")
        ax.set_title(f"{metric} after adaptation ({conf}% t-interval; {metric_direction(summary)})")
        ax.legend()
        ax.grid(alpha=0.3)
    for name, init in report["inits"].items():
        rows = init["budgets"]
        mean = [r["mean"] for r in rows]
        low = [r["ci_low"] if r["ci_low"] is not None else math.nan for r in rows]
        high = [r["ci_high"] if r["ci_high"] is not None else math.nan for r in rows]
        (line,) = ax_ret.plot(xs, mean, marker="o", label=f"{name} ({init['n_seeds']} seed(s))")
        ax_ret.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    ax_ret.set_xlabel(xlabel)
    ax_ret.set_ylabel("mean episode return on held-out tasks")
    ax_ret.set_title(f"return after adaptation ({conf}% t-interval over units)")
    ax_ret.legend()
    ax_ret.grid(alpha=0.3)
    for name, rows in report["paired"].items():
        mean = [r["mean"] for r in rows]
        low = [r["ci_low"] if r["ci_low"] is not None else math.nan for r in rows]
        high = [r["ci_high"] if r["ci_high"] is not None else math.nan for r in rows]
        (line,) = ax_diff.plot(xs, mean, marker="o", label=name)
        ax_diff.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    ax_diff.axhline(0.0, color="black", linewidth=0.8)
    ax_diff.set_xlabel(xlabel)
    ax_diff.set_ylabel("paired difference of returns")
    ax_diff.set_title(f"{report['reference']} minus baseline, task by task")
    if report["paired"]:
        ax_diff.legend()
    ax_diff.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def metric_direction(metric: Mapping[str, Any]) -> str:
    """``"higher is better"``, ``"lower is better"``, or that the metric did not say."""
    better = metric.get("higher_is_better")
    if better is None:
        return "direction not declared"
    return "higher is better" if better else "lower is better"


def _fmt(row: Mapping[str, Any], digits: int) -> str:
    half = row.get("half_width")
    if half is None or (isinstance(half, float) and not math.isfinite(half)):
        return f"{row['mean']:.{digits}f}"
    return f"{row['mean']:.{digits}f} ± {half:.{digits}f}"


def report_to_markdown(report: Mapping[str, Any], digits: int = 1) -> str:
    """Markdown tables: mean ± half-width per init and budget, adaptation gains, paired differences.

    A paired difference or gain whose interval excludes zero is marked with ``*``.
    """
    xs, _ = budget_axis(report["budgets"])
    unit = "rollouts" if report["budgets"].get("rollouts") is not None else "env steps"
    head = "| | " + " | ".join(f"{x}" for x in xs) + f" {unit} |"
    sep = "|---|" + "---|" * len(xs)
    lines = [
        f"Return on {report['n_tasks']} held-out tasks (mean ± {int(100 * report['confidence'])}% CI over units):",
        "",
        head,
        sep,
    ]
    for name, init in report["inits"].items():
        lines.append(
            f"| {name} ({init['n_seeds']} seed(s)) | "
            + " | ".join(_fmt(r, digits) for r in init["budgets"])
            + " |"
        )
    lines += [
        "",
        "Gain from adaptation (return minus return at the smallest budget, paired by unit):",
        "",
        head,
        sep,
    ]
    for name, init in report["inits"].items():
        cells = [
            _fmt(r, digits) + ("*" if r.get("excludes_zero") else "")
            for r in init["adaptation_gain"]
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report["paired"]:
        lines += [
            "",
            "Paired difference, task by task (* : the interval excludes 0):",
            "",
            head,
            sep,
        ]
        for name, rows in report["paired"].items():
            cells = [_fmt(r, digits) + ("*" if r.get("excludes_zero") else "") for r in rows]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Paired difference across training seeds (one value per seed):",
            "",
            head,
            sep,
        ]
        for name, rows in report["paired"].items():
            lines.append(
                f"| {name} | " + " | ".join(_fmt(r["across_seeds"], digits) for r in rows) + " |"
            )
    for metric, summary in (report.get("metrics") or {}).items():
        described = f": {summary['description']}" if summary.get("description") else ""
        lines += [
            "",
            f"Episode {metric}{described} ({metric_direction(summary)}; mean ± "
            f"{int(100 * report['confidence'])}% CI over units; paired rows: task by task, "
            "* : the interval excludes 0):",
            "",
            head,
            sep,
        ]
        for name, init in summary["inits"].items():
            lines.append(
                f"| {name} | " + " | ".join(_fmt(r, digits + 2) for r in init["budgets"]) + " |"
            )
        for name, rows in summary["paired"].items():
            cells = [_fmt(r, digits + 2) + ("*" if r.get("excludes_zero") else "") for r in rows]
            lines.append(f"| {name} (paired) | " + " | ".join(cells) + " |")
    selection = (report.get("metadata") or {}).get("adaptation_lr_selection")
    if selection:
        chosen = ", ".join(f"{name} {lr:g}" for name, lr in selection["chosen"].items())
        lines += [
            "",
            "Adaptation learning rate of each initialisation, chosen among "
            f"{', '.join(f'{c:g}' for c in selection['candidates'])} by the mean return after "
            f"adaptation on {len(selection['task_seeds'])} tasks of the "
            f"{selection.get('split') or 'training'} split: {chosen}."
            + (
                f" {selection['overlaps_held_out']} of those tasks equal held-out tasks (the "
                "family's splits overlap): the choice has seen them."
                if selection.get("overlaps_held_out")
                else ""
            ),
        ]
    return "\n".join(lines) + "\n"


def save_report(
    report: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    stem: str = "evaluation",
    title: str | None = None,
) -> dict[str, Path]:
    """Write ``{stem}.json``, ``{stem}.png`` and ``{stem}.md`` in ``out_dir``; return their paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(report, folder / f"{stem}.json"),
        "png": plot_report(report, folder / f"{stem}.png", title=title),
        "md": folder / f"{stem}.md",
    }
    paths["md"].write_text(report_to_markdown(report), encoding="utf-8")
    return paths


__all__ = [
    "json_ready",
    "metric_direction",
    "plot_report",
    "report_to_markdown",
    "save_report",
    "write_json",
]
