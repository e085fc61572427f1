"""register: the candidate as a version of the model's candidates, with its scores kept for later
runs."""

from __future__ import annotations

import json
from pathlib import Path

from skillops.context import RunContext
from skillops.inputs import preparation
from skillops.inputs.preparation import PreparedData
from skillops.judging import score_cache
from skillops.judging.evaluation import Scores
from skillops.stages.shared import candidate_model, data_release, remote_gate
from skillops.tracking import registry, runs


def register(run: RunContext, data: PreparedData, candidate_dir: Path, scores: Scores) -> str:
    recipe = run.recipe
    tags = {
        "skillops.recipe": recipe.name,
        "skillops.run_id": run.run_id,
        "skillops.data_fingerprint": data.data_fingerprint,
        "skillops.eval_fingerprint": data.eval_fingerprint,
        "skillops.git_commit": runs.git_commit(),
        **data_release(recipe),
        **{f"test_{k}": f"{v:.6f}" for k, v in scores.candidate.aggregate(recipe.evaluation.metric_names()).items()},
    }
    name = recipe.registered_model_name
    tags["skillops.variant_checks"] = json.dumps([check.model_dump() for check in scores.variants])
    remote = remote_gate()
    if remote is not None:  # the authority opens the model (its first policy) and its candidates model
        remote.open(name, run.recipe_source or recipe.name, run.fingerprints.code)
    version = registry.register(candidate_dir, run.run_id, name, tags, recipe.description, scores.served_variant)
    candidate_model.cache_clear()
    # A later run that finds this version as its champion, on the same snapshot, reads these
    # instead of encoding the test and golden sets again.
    candidate = {"test": scores.candidate} | {
        preparation.golden_part(golden): values.candidate for golden, values in scores.golden.items()
    }
    score_cache.save_scores(run.run_id, data.eval_fingerprint, candidate)
    return version
