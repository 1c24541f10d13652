"""The report's figures (job.collect.report): matplotlib `Figure`s, no pyplot, as SVG.

Drawn for report.html by the report step of the pipeline (job.collect.pipeline): the
front's hypervolume after each completed trial and the throughput, the Pareto plot with
the picks starred (job.collect.results's drawing), and proxy vs verified accuracy.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox
from optuna.trial import FrozenTrial

from job.collect.results import draw_front, draw_trials, plot_axes, plot_points
from job.config import Config
from job.search.view import complete_trials, front_hypervolume, pareto_trials


def svg(fig: Figure) -> str:
    """The figure as a data: URL (SVG; text as paths, so no font is needed to view it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set(xticks=[], yticks=[])


def completion_order(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """COMPLETE trials in the order they finished (ties, and unknown times, by number)."""
    return sorted(
        complete_trials(trials),
        key=lambda t: (t.datetime_complete is None, t.datetime_complete or datetime.min, t.number),
    )


def hypervolume_curve(trials: Sequence[FrozenTrial], objectives: Sequence[str]) -> list[float]:
    """The front's normalised hypervolume after each completed trial, in completion order.
    The front of a prefix and one more trial is the front of the old front and that trial,
    so each step looks at the front only."""
    front: list[FrozenTrial] = []
    curve = []
    for trial in completion_order(trials):
        front = pareto_trials([*front, trial], objectives)
        curve.append(front_hypervolume(front, objectives))
    return curve


def progress_figure(trials: Sequence[FrozenTrial], config: Config) -> Figure:
    """Left: hypervolume after each completed trial; right: COMPLETE trials vs wall time."""
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    done = completion_order(trials)
    curve = hypervolume_curve(trials, config.objectives)
    if curve:
        left.step(range(1, len(curve) + 1), curve, where="post", color="crimson")
        left.set(xlabel="COMPLETE trials, in completion order", ylabel="hypervolume")
        left.grid(True, alpha=0.3)
    else:
        _note(left, "no complete trials")
    left.set_title("front hypervolume (normalised)")
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = sorted(t.datetime_complete for t in done if t.datetime_complete is not None)
    if starts and ends:
        seconds = [(end - min(starts)).total_seconds() for end in ends]
        hours = seconds[-1] > 2 * 3600
        scale, unit = (3600.0, "h") if hours else (60.0, "min")
        right.step([0.0] + [s / scale for s in seconds], range(len(ends) + 1), where="post")
        right.set(xlabel=f"wall time since the first trial started ({unit})", ylabel="COMPLETE")
        right.grid(True, alpha=0.3)
    else:
        _note(right, "no completion times")
    right.set_title("throughput")
    return fig


def pareto_figure(
    trials: Sequence[FrozenTrial],
    config: Config,
    selection: dict[str, Any],
    baselines: Any = None,
) -> Figure:
    """pareto.png's figure (job.collect.results's drawing), each pick starred and labelled,
    and each baseline of baselines.json a labelled diamond at its size and its verified
    (test) accuracy: where the picks stand against them."""
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    (_, _, x_label), (_, _, y_label) = plot_axes(config.objectives)
    points = plot_points(complete_trials(trials), config.objectives)
    if not points:
        _note(ax, "no complete trial to plot")
        return fig
    draw_trials(fig, ax, points)
    draw_front(ax, plot_points(pareto_trials(trials, config.objectives), config.objectives))
    by_trial: dict[int, list[str]] = {}
    for policy, choice in selection.items():
        if isinstance(choice, dict) and isinstance(choice.get("trial"), int):
            by_trial.setdefault(choice["trial"], []).append(policy)
    # Picks sit high (accurate): labels hang below them, staggered, on leader lines.
    picked = sorted((p for p in points if p[0].number in by_trial), key=lambda p: p[1])
    box = {"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.9, "linewidth": 0.5}
    style: dict[str, Any] = {"fontsize": 10, "fontweight": "bold", "bbox": box, "zorder": 7}
    style["arrowprops"] = {"arrowstyle": "-", "color": "black", "linewidth": 0.8}
    labels = []
    for i, (trial, x, y) in enumerate(picked):
        ax.scatter([x], [y], marker="*", s=260, color="orange", edgecolors="black", zorder=6)
        label = ", ".join(by_trial[trial.number])
        offset = (14, -28 - 26 * (i % 4))
        labels.append(
            ax.annotate(label, (x, y), xytext=offset, textcoords="offset points", **style)
        )
    labels += _draw_baselines(ax, baselines, style)
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set(xlabel=f"{x_label} (log scale)", ylabel=y_label)
    separate(fig, labels)
    return fig


def _draw_baselines(ax: Axes, baselines: Any, style: dict[str, Any]) -> list[Annotation]:
    """Each baseline with a size and a verified accuracy, as a diamond and its name."""
    found = baselines.get("baselines", []) if isinstance(baselines, dict) else []
    drawn = [
        (str(b.get("name")), params, accuracy)
        for b in found
        if (params := _num(b.get("params"))) is not None
        and params > 0
        and (accuracy := _num(b.get("verified_accuracy"))) is not None
    ]
    plain = style | {"fontweight": "normal", "color": "steelblue", "ha": "right"}
    marker: dict[str, Any] = {"marker": "D", "s": 90, "color": "steelblue", "edgecolors": "black"}
    labels = []
    for i, (name, x, y) in enumerate(drawn):
        legend = "baselines (verified test accuracy)" if i == 0 else None
        ax.scatter([x], [y], zorder=6, label=legend, **marker)
        text = f"{name} (baseline)"
        offset = (-14, 20)
        labels.append(ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", **plain))
    return labels


def _renderer(fig: Figure) -> RendererBase:
    """A renderer to measure text with, after laying the figure out as saving will."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)  # savefig makes its own; this one only measures
    fig.draw_without_rendering()  # the constrained layout
    return fig.canvas.get_renderer()  # type: ignore[attr-defined, no-any-return]


def _dpi(artist: Text) -> float:
    figure = artist.get_figure()
    return float(figure.dpi) if figure is not None else 72.0


def _box(label: Text, renderer: RendererBase) -> Bbox:
    """A label's box in pixels: its text and the frame around it (not an annotation's
    leader line, which may cross other labels), padded by the frame's pad."""
    dpi = _dpi(label)
    pad = float(label.get_fontsize()) * 0.3 * dpi / 72.0  # the frame: pad 0.2 em, and a line
    return Text.get_window_extent(label, renderer).padded(pad)


def label_boxes(fig: Figure, labels: Sequence[Text]) -> list[Bbox]:
    """Each label's box (`_box`), as the figure is laid out."""
    renderer = _renderer(fig)
    return [_box(label, renderer) for label in labels]


def separate(fig: Figure, labels: Sequence[Annotation], gap_px: float = 4.0) -> None:
    """Move labels down, each below any earlier one its box would cover: picks crowd at
    the front's accurate end, and their labels must never hide each other. The labels
    stay out of the layout, so moving one moves nothing else."""
    for label in labels:
        label.set_in_layout(False)
    renderer = _renderer(fig)
    placed: list[Bbox] = []
    for label in labels:
        for _ in range(len(labels) + 1):  # each move clears one placed box
            box = _box(label, renderer)
            hit = next((b for b in placed if box.overlaps(b)), None)
            if hit is None:
                break
            x, y = label.xyann
            label.xyann = (x, y - (box.y1 - hit.y0 + gap_px) * 72.0 / fig.dpi)
        placed.append(_box(label, renderer))


def verify_figure(verify: dict[str, Any], baselines: Any) -> Figure:
    """Proxy (search) accuracy vs verified (retrained, test) accuracy per retrained trial,
    ± the seeds' std; each baseline's verified accuracy as a dashed line."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    both = ("proxy_accuracy", "verified_accuracy")
    rows = [m for m in verify.get("models", []) if all(_num(m.get(k)) is not None for k in both)]
    if not rows:
        _note(ax, "no verified model yet")
        return fig
    for on_front, colour in ((True, "crimson"), (False, "grey")):
        group = [m for m in rows if bool(m.get("on_front")) == on_front]
        if group:
            xs, ys = [m["proxy_accuracy"] for m in group], [m["verified_accuracy"] for m in group]
            errors = [_num(m.get("verified_std")) or 0.0 for m in group]
            label = "on the front" if on_front else "off the front"
            ax.errorbar(xs, ys, yerr=errors, fmt="o", color=colour, capsize=3, label=label)
    for m in rows:
        point = (m["proxy_accuracy"], m["verified_accuracy"])
        ax.annotate(str(m["trial"]), point, xytext=(5, 4), textcoords="offset points", fontsize=9)
    found = baselines.get("baselines", []) if isinstance(baselines, dict) else []
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
    for i, base in enumerate(b for b in found if _num(b.get("verified_accuracy")) is not None):
        label = f"{base['name']} (baseline)"
        line = styles[i % len(styles)]
        ax.axhline(base["verified_accuracy"], linestyle=line, color="steelblue", label=label)
    ax.set(xlabel="proxy accuracy (search, validation)", ylabel="verified accuracy (test)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return fig


def _num(value: Any) -> float | None:
    """A finite number, or None (missing, null, NaN, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
