"""What people look at after a run: charts (PNG) and the plain-text / markdown summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

from skillops.config import SHORT_LIST
from skillops.inputs import esco
from skillops.inputs.preparation import read_eval_set
from skillops.judging.promotion import Decision


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
        axis.plot(*zip(*points, strict=True), marker="o", markersize=3)
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


def optuna_charts(study, directory: Path) -> list[Path]:
    """Optuna's own matplotlib views of the search: the history, the parameters' importances and
    the parallel coordinates of every trial. Views that need more finished trials than the search
    has (importances need two) are left out."""
    import warnings

    import optuna.visualization.matplotlib as views

    plt = _pyplot()
    charts = {
        "optuna_history.png": views.plot_optimization_history,
        "optuna_importances.png": views.plot_param_importances,
        "optuna_parallel_coordinate.png": views.plot_parallel_coordinate,
    }
    finished = [t for t in study.trials if t.value is not None and math.isfinite(t.value)]
    written = []
    for name, view in charts.items():
        if view is views.plot_param_importances and len(finished) < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib views experimental
            axis = view(study)
        axis.figure.set_size_inches(7, 4)
        axis.figure.tight_layout()
        axis.figure.savefig(directory / name, dpi=110)
        plt.close(axis.figure)
        written.append(directory / name)
    return written


def _score_table(scores: dict[str, dict[str, float]]) -> list[str]:
    metrics = list(next(iter(scores.values())))
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for model, values in scores.items():
        lines.append(f"| {model} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    return lines


def served_lines(served: str, variants: list) -> list[str]:
    """How the candidate is served, and how each variant compared with its fp32 weights."""
    kind = {
        "fp32": "the PyTorch weights",
        "onnx": "ONNX in onnxruntime",
        "int8": "ONNX with int8 weights",
        "int8_blocks": "ONNX with int8 weights in blocks",
    }
    lines = [f"Served as: {served} ({kind[served]}); SKILLOPS_SERVING_VARIANT=fp32 at serve time serves fp32 instead."]
    return lines + [f"- {check.detail}" + (" (served)" if check.served else "") for check in variants]


def summary(
    model_name: str,
    version: str,
    scores: dict[str, dict[str, float]],
    decision: Decision,
    champion: str | None,
    ui_command: str,
    golden: dict[str, dict[str, dict[str, float]]] | None = None,
    champion_scores: str | None = None,
    served: list[str] | None = None,
    how_measured: str = "",
) -> str:
    """The evaluation report: decision, scores (test set, then each golden set), every check of
    the policy, and where the champion's scores came from (`champion_scores`: cache or re-scored).
    Markdown that reads well in a terminal, as a Prefect artifact and as an MLflow artifact."""
    against = decision.reference_name + (
        f" (version {decision.reference_version})" if decision.reference_version else ""
    )
    lines = [
        f"## {model_name} candidate {version}: "
        + (f"PROMOTED to champion as version {decision.served_version}" if decision.promote else "not promoted"),
        "",
        f"Why: {decision.reason}.",
        "",
        *([how_measured, ""] if how_measured else []),
        *_score_table(scores),
        "",
        *(
            line
            for name, table in (golden or {}).items()
            for line in (f"Golden set `{name}` (frozen):", "", *_score_table(table), "")
        ),
        f"Checks against the {against}:",
        "",
        *(f"- {'pass' if check.passed else 'FAIL'}: {check.detail}" for check in decision.checks),
        "",
        *([f"Champion's scores: {champion_scores}.", ""] if champion_scores else []),
        *([*served, ""] if served else []),
        f"Champion now: version {champion or 'none'} (`models:/{model_name}@champion`).",
        f"Compare runs: {ui_command}",
    ]
    return "\n".join(lines) + "\n"


def measured(evaluation, test_set) -> str:
    """How the scores were measured, in a sentence a reader of the decision needs: for a whole
    ranking, how many documents each query ranks, what the short list is and what graded
    relevance changes."""
    if evaluation.evaluator != "information_retrieval":
        return ""
    text = (
        f"Each held-out query ranks all {len(test_set['corpus']):,} documents of the corpus; `cosine_map` is MAP "
        "over that whole ranking, with no cut-off."
    )
    if evaluation.short_list_negatives:
        text += (
            f" `{SHORT_LIST}` is card 000's number: each query's relevant documents among "
            f"{evaluation.short_list_negatives} others drawn once and frozen with the set."
        )
    if test_set.get("relevance"):
        text += (
            " Relevance is graded (ESCO essential skills 2, optional 1) in NDCG only; MAP, MRR, R-precision and "
            "recall count every linked skill."
        )
    return text


def score_rows(scores, metrics: list[str]) -> list[dict]:
    """One row per model and eval set (test, then golden sets) with its headline metrics rounded:
    the table a Prefect artifact shows next to the decision."""
    tables = {"test": scores.table(metrics), **{f"golden {n}": g for n, g in scores.golden_table(metrics).items()}}
    return [
        {"set": eval_set, "model": model, **{name: round(value, 4) for name, value in values.items()}}
        for eval_set, table in tables.items()
        for model, values in table.items()
    ]


def card_summary(recipe, table: dict[str, dict[str, float]], decision: Decision, run_id: str) -> str:
    """The model card in short, for the registered version's description in the MLflow UI."""
    lines = [
        recipe.description or f"Trained by the skillops recipe `{recipe.name}` from `{recipe.base_model}`.",
        "",
        f"Held-out test set ({recipe.evaluation.evaluator}):",
        "",
        *_score_table(table),
        "",
        f"{'Promoted' if decision.promote else 'Not promoted'}: {decision.reason}.",
        "",
        f"Model card, evaluation report and per-query scores: `report/` of MLflow run {run_id}.",
    ]
    return "\n".join(lines) + "\n"


def model_card(
    recipe,
    version: str,
    counts: dict[str, int],
    eval_fingerprint: str,
    scores: dict[str, dict[str, float]],
    decision: Decision,
    params: dict[str, str],
    served: list[str],
) -> str:
    """What a user of the registered model needs: what it is, how to call it, what it was trained
    and tested on, how it scored, what it is served as, and the licence of the data."""
    prompts = recipe.prompts
    usage = (
        'model.encode(texts, prompt_name="query")  # and prompt_name="document" for skill texts'
        if prompts
        else "model.encode(texts)"
    )
    data_source = (
        "ESCO (European Skills, Competences, Qualifications and Occupations), CC BY 4.0, (c) European Union"
        if recipe.data.format == "esco"
        else recipe.data.path
    )
    trained = {k.removeprefix("best."): v for k, v in params.items() if k.startswith("best.")}
    lines = [
        f"# {recipe.registered_model_name} candidate {version}"
        + (f" (served as version {decision.served_version})" if decision.served_version else ""),
        "",
        recipe.description
        or f"A sentence-embedding model for skills and occupations, trained by the skillops recipe `{recipe.name}`.",
        "",
        "## Use",
        "",
        "```python",
        "from skillops import registry",
        f'model = registry.load("models:/{recipe.registered_model_name}@champion", as_served=True)  # a SentenceTransformer',
        usage,
        "```",
        "",
        f"Serving: `mlflow models serve -m models:/{recipe.registered_model_name}@champion --env-manager local -h 127.0.0.1 -p 5001`, "
        + (
            'then POST `{"inputs": [...], "params": {"prompt_name": "query"}}` to `/invocations` '
            f"(prompts: query {prompts.query!r}, document {prompts.document!r})."
            if prompts
            else 'then POST `{"inputs": [...]}` to `/invocations`.'
        ),
        "",
        "## Training",
        "",
        f"- Base model: `{recipe.base_model}`",
        f"- Data: {data_source} ({recipe.data.training_shape}; "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + ")",
        *([f"- ESCO release: {esco.release(recipe.data)}"] if recipe.data.format == "esco" else []),
        f"- Loss: {recipe.loss.name}; max_seq_length {recipe.training.max_seq_length}",
        f"- Tuned parameters: {', '.join(f'{k} = {v}' for k, v in trained.items()) or 'none (no search)'}",
        "",
        f"## Evaluation (held-out test set, {recipe.evaluation.evaluator}, snapshot {eval_fingerprint})",
        "",
        *_score_table(scores),
        "",
        f"Promotion decision: {'promoted' if decision.promote else 'not promoted'}: {decision.reason}.",
        "",
        *served,
        "",
        "## Limitations",
        "",
        "- Scored on a held-out part of the same data source; other taxonomies, languages or text styles may score lower.",
        f"- Texts longer than {recipe.training.max_seq_length} tokens are cut.",
    ]
    return "\n".join(lines) + "\n"


def write_evaluation_report(
    directory: Path,
    recipe,
    version: str,
    run_id: str,
    data,
    scores,
    decision: Decision,
    champion: str | None,
    params: dict[str, str],
    ui_command: str,
    churn=None,
) -> tuple[str, list[Path]]:
    """The evaluation report (markdown and JSON), per-query scores, the comparison chart and the
    model card, written under `directory`; returns the report's markdown and the files. `churn`:
    how a promotion moves the documents' neighbourhoods (`index_churn.Churn`)."""
    table = scores.table(recipe.evaluation.reported_metrics())
    golden = scores.golden_table(recipe.evaluation.reported_metrics())
    served = served_lines(scores.served_variant, scores.variants)
    text = summary(
        recipe.registered_model_name,
        version,
        table,
        decision,
        champion,
        ui_command,
        golden,
        scores.champion_source,
        served,
        measured(recipe.evaluation, read_eval_set(data.paths.eval_set("test"))),
    )
    if churn is not None:
        text += "\n" + churn.markdown()
    per_query = [("base", scores.base), ("candidate", scores.candidate), ("champion", scores.champion)]
    for name, sets in scores.golden.items():
        per_query += [
            (f"{model} on golden set {name}", getattr(sets, model)) for model in ("base", "candidate", "champion")
        ]
    files = {
        "evaluation.md": text,
        "evaluation.json": json.dumps(
            {
                "model": recipe.registered_model_name,
                "version": version,
                "run_id": run_id,
                "champion_now": champion,
                "eval_fingerprint": data.eval_fingerprint,
                "data_fingerprint": data.data_fingerprint,
                "champion_scores": scores.champion_source,
                "scores": table,
                "golden": golden,
                "decision": decision.model_dump(),
                "served_variant": scores.served_variant,
                "variants": [check.model_dump() for check in scores.variants],
                "index_churn": churn.model_dump() if churn else None,
            },
            indent=1,
        ),
        "per_query.json": json.dumps({name: values.model_dump() for name, values in per_query if values}),
        "model_card.md": model_card(
            recipe, version, data.counts, data.eval_fingerprint, table, decision, params, served
        ),
    }
    written = []
    for name, content in files.items():
        (directory / name).write_text(content, "utf-8")
        written.append(directory / name)
    chart = comparison_chart(table, directory / "comparison.png", f"Held-out test set ({recipe.evaluation.evaluator})")
    return text, [*written, chart]
