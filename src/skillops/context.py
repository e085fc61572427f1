"""What every stage of one pipeline run shares: the recipe, what the run's inputs are (their
fingerprints) and the MLflow run it writes to. Small and serialisable, so the flow passes it
from task to task instead of four to six positional arguments."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel

from skillops import paths
from skillops.config import Recipe
from skillops.inputs import preparation
from skillops.tracking import runs


class Fingerprints(BaseModel):
    """What decides whether a retrain can change anything: the data, the recipe, the code."""

    data: str | None  # None for a hub dataset: skillops cannot see whether it changed
    recipe: str
    code: str

    @property
    def attempt(self) -> str:
        """Names the work folder that a crashed run resumes from when run again."""
        return hashlib.sha256(f"{self.data}|{self.recipe}|{self.code}".encode()).hexdigest()[:16]

    def tags(self) -> dict[str, str]:
        return {
            "skillops.data_fingerprint": str(self.data),
            "skillops.recipe_hash": self.recipe,
            "skillops.code_version": self.code,
            "skillops.git_commit": self.code.split("+")[0],
        }


def fingerprint(recipe: Recipe) -> Fingerprints:
    files = preparation.source_files(recipe.data)
    golden = [g.location for g in recipe.evaluation.golden]
    return Fingerprints(
        # The source files, the golden sets and every data setting: a change to any is new data.
        data=preparation.fingerprint_files(files + golden, extra=recipe.data.model_dump_json()) if files else None,
        recipe=hashlib.sha256(recipe.model_dump_json().encode()).hexdigest()[:16],
        code=runs.code_version(),
    )


class FlowRun(BaseModel):
    """The orchestrator's run a pipeline run belongs to, on a server that outlives it."""

    id: str
    api: str  # the orchestrator's API, without password: any machine that shares it can ask about the run
    name: str  # as the orchestrator's UI shows it
    deployment: str | None = None  # e.g. train-esco/weekly; None for a run started by hand


class RunContext(BaseModel):
    """One pipeline run: its recipe, its inputs' fingerprints and its MLflow run."""

    recipe: Recipe
    fingerprints: Fingerprints
    run_id: str
    # The recipe as it was named (a built-in name or a file), before this run's overrides: the
    # served model's first policy is that file's, never an override's. None: given as an object.
    recipe_source: str | None = None

    @property
    def output_dir(self) -> Path:
        return paths.output_dir(self.run_id)

    @property
    def attempt_dir(self) -> Path:
        return paths.attempt_dir(self.fingerprints.attempt)
