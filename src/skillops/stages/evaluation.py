"""evaluate-models: base, candidate (as it will be served) and champion, per query, on the same
frozen sets."""

from __future__ import annotations

from pathlib import Path

from skillops.context import RunContext
from skillops.inputs import preparation
from skillops.inputs.preparation import PreparedData
from skillops.judging import score_cache
from skillops.judging.evaluation import GoldenScores, QueryScores, Scores
from skillops.judging.promotion import choose_variant
from skillops.serving import variants
from skillops.stages.shared import candidate_model, gate_sets, score_on_sets, version_scores
from skillops.tracking import registry, runs
from skillops.training.modeling import load_model


def _golden(scores: dict[str, QueryScores]) -> dict[str, QueryScores]:
    """Golden set name -> scores, from eval set name -> scores."""
    prefix = preparation.golden_part("")
    return {name.removeprefix(prefix): values for name, values in scores.items() if name.startswith(prefix)}


def _base_scores(run: RunContext, data: PreparedData, eval_sets: list[str]) -> dict[str, QueryScores]:
    """The base model's per-query scores, cached on this machine per snapshot (`score_cache`)."""
    recipe = run.recipe
    scores, note = score_cache.base_scores(
        recipe.base_model,
        recipe.training.max_seq_length,
        data.eval_fingerprint,
        eval_sets,
        lambda sets: score_on_sets(run, data, load_model(recipe.base_model, recipe.training.max_seq_length), sets),
    )
    if note:
        runs.set_tags(run.run_id, {"skillops.base_scores": note})
    return scores


def _served_variants(run: RunContext, data: PreparedData, candidate_dir: Path, fp32: dict[str, QueryScores]):
    """The candidate's ONNX variants (the recipe's `serving.variants`), built into its folder and scored on the
    gate's sets like fp32; returns the variant it is served as, its scores and the checks."""
    recipe, primary = run.recipe, run.recipe.evaluation.primary_metric
    eval_sets = list(fp32)
    wanted = recipe.serving.variants
    built = {v: candidate_dir / variants.FILES[v] for v in wanted if (candidate_dir / variants.FILES[v]).is_file()}
    if len(built) < len(wanted):  # exported once per attempt: a resumed run finds them
        built = variants.export(candidate_model(candidate_dir), candidate_dir, wanted)
    scored = {v: score_on_sets(run, data, variants.load(candidate_dir, v), eval_sets) for v in built}
    served, checks = choose_variant(
        {s: fp32[s].metric(primary) for s in eval_sets},
        {v: {s: values[s].metric(primary) for s in eval_sets} for v, values in scored.items()},
        recipe.serving.prefer,
        recipe.serving.max_relative_drop,
        primary,
    )
    for variant, values in scored.items():
        runs.log_metrics(run.run_id, values["test"].aggregate(recipe.evaluation.metric_names()), prefix=f"{variant}_")
    runs.set_tags(run.run_id, {"skillops.served_variant": served})
    return served, scored.get(served, fp32), checks


def evaluate_models(run: RunContext, data: PreparedData, candidate_dir: Path) -> Scores:
    """Base, candidate and current champion, per query, all on the same frozen test set and on
    every golden set. The candidate is judged as it will be served: its fastest variant within
    `serving.max_relative_drop` of its fp32 weights (fp32 itself when none is)."""
    recipe = run.recipe
    eval_sets = gate_sets(recipe)
    base = _base_scores(run, data, eval_sets)
    fp32 = score_on_sets(run, data, candidate_model(candidate_dir), eval_sets)
    runs.log_metrics(run.run_id, fp32["test"].aggregate(recipe.evaluation.metric_names()), prefix="fp32_")
    served, candidate, checks = _served_variants(run, data, candidate_dir, fp32)
    champion_version = registry.champion_version(recipe.registered_model_name)
    champion, source = version_scores(run, data, champion_version) if champion_version else ({}, None)
    golden_champion = _golden(champion)
    scores = Scores(
        base=base["test"],
        candidate=candidate["test"],
        champion=champion.get("test"),
        champion_version=champion_version,
        champion_source=source,
        golden={
            name: GoldenScores(base=values, candidate=_golden(candidate)[name], champion=golden_champion.get(name))
            for name, values in _golden(base).items()
        },
        served_variant=served,
        variants=checks,
    )
    metrics = recipe.evaluation.metric_names()
    for name, values in (("base", base), ("test", candidate), ("champion", champion)):
        for eval_set, per_query in values.items():
            prefix = f"{name}_" if eval_set == "test" else f"{name}_golden_{eval_set.removeprefix('golden-')}_"
            runs.log_metrics(run.run_id, per_query.aggregate(metrics), prefix=prefix)
    return scores
