"""What people look at after a run: charts (PNG) and the plain-text / markdown summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

from skillops.promotion import Decision


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def loss_curve_chart(log_history: Path, path: Path, loss_name: str) -> Path:
    history = json.loads(log_history.read_text("utf-8"))
    points = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if points:
        axis.plot(*zip(*points), marker="o", markersize=3)
    axis.set(xlabel="optimizer step", ylabel=f"training loss ({loss_name})", title="Training loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def rounds_chart(round_scores: list[dict[str, float]], metric: str, path: Path) -> Path:
    """The primary validation metric after each round of continued training (card 000's curve)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    rounds = range(1, len(round_scores) + 1)
    axis.plot(rounds, [scores[metric] for scores in round_scores], marker="o")
    axis.set(xlabel="training round", ylabel=f"validation {metric}", title="Continued training", xticks=list(rounds))
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def comparison_chart(scores: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per model (base, candidate, champion)."""
    plt = _pyplot()
    metrics = list(next(iter(scores.values())))
    width = 0.8 / len(scores)
    figure, axis = plt.subplots(figsize=(max(7, 1.6 * len(metrics)), 3.8))
    for index, (model, values) in enumerate(scores.items()):
        positions = [m + index * width for m in range(len(metrics))]
        bars = axis.bar(positions, [values[m] for m in metrics], width, label=model)
        axis.bar_label(bars, fmt="%.3f", fontsize=7)
    axis.set_xticks([m + width * (len(scores) - 1) / 2 for m in range(len(metrics))], metrics)
    axis.set(ylim=(0, 1.05), ylabel="score", title=title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def optuna_history_chart(study, path: Path) -> Path:
    plt = _pyplot()
    trials = [t for t in study.trials if t.value is not None and math.isfinite(t.value)]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([t.number for t in trials], [t.value for t in trials], "o", label="trial")
    best, values = [], []
    for trial in trials:
        values.append(trial.value)
        best.append(max(values))
    axis.step([t.number for t in trials], best, where="post", label="best so far")
    pruned = [t.number for t in study.trials if t.state.name == "PRUNED"]
    axis.set(xlabel="trial", ylabel="validation score", title=f"Optuna search ({len(pruned)} pruned)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def summary(
    model_name: str,
    version: str,
    scores: dict[str, dict[str, float]],
    decision: Decision,
    champion: str | None,
    ui_command: str,
) -> str:
    """Markdown that reads well in a terminal, as a Prefect artifact and as an MLflow artifact."""
    metrics = list(next(iter(scores.values())))
    lines = [
        f"## {model_name} version {version}: {'PROMOTED to champion' if decision.promote else 'not promoted'}",
        "",
        f"Why: {decision.reason}.",
        "",
        "| model | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for model, values in scores.items():
        lines.append(f"| {model} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    lines += [
        "",
        f"Champion now: version {champion or 'none'} (`models:/{model_name}@champion`).",
        f"Compare runs: `{ui_command}`",
    ]
    return "\n".join(lines) + "\n"
