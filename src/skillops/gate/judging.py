"""How the promotion authority of a team's stack judges by itself: the recipe at the ref a run
recorded, evaluation sets built from it and frozen, every model scored from its registered files,
and the served version logged from files it checked.

Nothing here takes a score, a set or a file from the worker that asks: a candidate is the version
of `<name>-candidates` the worker registered, downloaded from the registry and refused if its
folder holds anything but weights, configs and ONNX graphs (`variants.check_model_files`); its
scores are computed here, on the sets held here (`holdings`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from skillops.config import Recipe, load_recipe, resolve_path
from skillops.errors import RecipeError
from skillops.gate.authority import GOLDEN
from skillops.gate.holdings import Holdings
from skillops.inputs import preparation
from skillops.judging.evaluation import QueryScores, VariantCheck, score_sets
from skillops.judging.promotion import ModelPolicy, choose_variant
from skillops.serving import variants
from skillops.serving.mlflow_model import model_folder
from skillops.tracking import registry, runs
from skillops.training.modeling import load_model, resolve_model

logger = logging.getLogger(__name__)

EXPERIMENT = "skillops-gate"  # where the authority logs the served versions it registers


class Sources:
    """The recipes runs name, read as they were at the git ref the run recorded: a built-in
    recipe (and the bundled data it names) from the team's repository at that commit, or a
    recipe file on storage this machine shares with the workers (an absolute path)."""

    def __init__(self, git_url: str | None, workdir: Path) -> None:
        self.git_url, self.workdir = git_url, workdir

    def recipe(self, source: str, ref: str | None) -> Recipe:
        path = Path(source)
        if path.is_absolute():
            return load_recipe(path)
        if not self.git_url or not ref:
            raise RecipeError(
                f"Recipe {source!r} at ref {ref!r}: the promotion authority reads built-in recipes from the team's "
                "repository at the run's commit, and knows no repository (SKILLOPS_GIT_URL on the server machine) "
                "or the run recorded no commit. Give the recipe as a file on shared storage (an absolute path)."
            )
        package = self._package_at(ref.split("+")[0])
        recipe = load_recipe(package / "recipes" / f"{source}.yaml") if "/" not in source else None
        if recipe is None:
            raise RecipeError(f"Recipe {source!r}: not a built-in recipe name, and not an absolute path.")
        # The bundled data it names is the package's at that commit, not this machine's.
        data = recipe.data.model_copy(update={"path": str(self._bundled(package, recipe.data.path))})
        golden = [g.model_copy(update={"path": str(self._bundled(package, g.path))}) for g in recipe.evaluation.golden]
        evaluation = recipe.evaluation.model_copy(update={"golden": golden})
        return recipe.model_copy(update={"data": data, "evaluation": evaluation})

    @staticmethod
    def _bundled(package: Path, path: str) -> Path:
        return package / path if not Path(path).is_absolute() and (package / path).exists() else resolve_path(path)

    def _package_at(self, commit: str) -> Path:
        """src/skillops of the repository at `commit` (its recipes and bundled data), fetched once."""
        target = self.workdir / "refs" / commit
        if (target / "src" / "skillops").is_dir():
            return target / "src" / "skillops"
        mirror = self.workdir / "repository.git"
        if not mirror.is_dir():
            self._git("clone", "--quiet", "--bare", self.git_url, str(mirror))
        else:
            self._git("-C", str(mirror), "fetch", "--quiet", "origin", "+refs/heads/*:refs/heads/*")
        partial = Path(tempfile.mkdtemp(dir=self.workdir, prefix=".ref-"))
        archive = subprocess.run(
            ["git", "-C", str(mirror), "archive", commit, "src/skillops"], capture_output=True, check=False
        )
        if archive.returncode != 0:
            shutil.rmtree(partial)
            raise RecipeError(
                f"Commit {commit} is not in the team's repository {self.git_url} ({archive.stderr.decode().strip()}): "
                "push it, or run from a commit the repository has."
            )
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive.stdout, check=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.rename(target)
        return target / "src" / "skillops"

    @staticmethod
    def _git(*args: str) -> None:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RecipeError(f"git {' '.join(args[:2])} failed: {done.stderr.strip()}")


def frozen_sets(recipe: Recipe) -> tuple[str, dict[str, Any]]:
    """(snapshot, eval set name -> content): the test split and the golden sets of `recipe`, as
    a run of it prepares them; the snapshot fingerprints their content and how they are scored."""
    task = preparation.build_task(recipe)
    sets = {name: content for name, content in task.eval_sets.items() if name == "test" or name.startswith(GOLDEN)}
    settings = recipe.prompts.model_dump_json() + recipe.evaluation.model_dump_json(exclude={"batch_size"})
    snapshot = hashlib.sha256((json.dumps(sets, sort_keys=True) + settings).encode()).hexdigest()[:16]
    return snapshot, sets


class FrozenEvidence:
    """A candidate and the model's champion (or base model), scored here on the model's frozen
    sets, each model's per-query scores kept in the holdings. After `candidate()`, `served_variant`
    and `checks` say which variant the candidate is served as, and why, and `model_dir` is its
    checked folder."""

    def __init__(self, holdings: Holdings, name: str, candidate: str, policy: ModelPolicy, workdir: Path) -> None:
        found = holdings.frozen(name)
        if found is None:
            raise RecipeError(f"{name!r}: the promotion authority holds no evaluation sets for it; set its policy.")
        self.snapshot, self.recipe, sets = found
        self.holdings, self.name, self.version, self.policy = holdings, name, candidate, policy
        self.workdir = workdir
        folder = workdir / "sets" / self.snapshot
        if not folder.is_dir():
            partial = Path(tempfile.mkdtemp(dir=workdir, prefix=".sets-"))
            for part, content in sets.items():
                (partial / f"{part}.json").write_text(json.dumps(content), "utf-8")
            folder.parent.mkdir(parents=True, exist_ok=True)
            partial.rename(folder)
        self.paths = {part: folder / f"{part}.json" for part in sets}
        self.served_variant, self.checks, self.model_dir = "fp32", [], None

    def _score(self, weights: str, variant: str, load) -> dict[str, QueryScores]:
        kept = {part: self.holdings.scored(weights, self.snapshot, part, variant) for part in self.paths}
        missing = [part for part, scores in kept.items() if scores is None]
        if missing:
            recipe = self.recipe
            fresh = score_sets(load(), {p: self.paths[p] for p in missing}, recipe.evaluation, recipe.prompts)
            for part, scores in fresh.items():
                self.holdings.keep(weights, self.snapshot, part, variant, scores)
                kept[part] = scores
        return kept

    def candidate(self) -> dict[str, QueryScores]:
        version = runs.client().get_model_version(registry.candidates(self.name), self.version)
        weights = f"{version.run_id}/{version.source}"
        self.model_dir = download(registry.model_uri(registry.candidates(self.name), self.version), self.workdir)
        fp32 = self._score(weights, "fp32", lambda: load_model(str(self.model_dir)))
        metric = self.policy.primary_metric
        built = {
            variant: self._score(weights, variant, lambda v=variant: variants.load(self.model_dir, v))
            for variant in variants.FILES
            if (self.model_dir / variants.FILES[variant]).is_file()
        }
        self.served_variant, self.checks = choose_variant(
            {part: scores.metric(metric) for part, scores in fp32.items()},
            {variant: {part: s.metric(metric) for part, s in scores.items()} for variant, scores in built.items()},
            self.recipe.serving.prefer,
            self.policy.max_variant_drop,
            metric,
        )
        return built.get(self.served_variant, fp32)

    def reference(self, champion: str | None) -> tuple[dict[str, QueryScores], str | None]:
        if champion is None:
            base = self.recipe.base_model
            folder = Path(resolve_model(base))
            files = preparation.fingerprint_files(
                [p for p in folder.rglob("*") if p.is_file()], extra=str(self.recipe.training.max_seq_length)
            )
            scores = self._score(f"base:{files}", "fp32", lambda: load_model(base, self.recipe.training.max_seq_length))
            return scores, f"the base model {base}, scored by the promotion authority"
        served = runs.client().get_model_version(self.name, champion)
        candidate = served.tags.get(registry.CANDIDATE_TAG)
        if candidate is None:
            raise RecipeError(
                f"Version {champion} of {self.name!r} is champion but was not registered by the promotion authority "
                "(it names no candidate): an admin registered it by hand. Roll back to a version the authority "
                "registered, or ask the admin."
            )
        source = runs.client().get_model_version(registry.candidates(self.name), candidate)
        variant = served.tags.get("skillops.served_variant", "fp32")
        uri = registry.model_uri(self.name, champion)
        scores = self._score(f"{source.run_id}/{source.source}", variant, lambda: registry.load(uri, as_served=True))
        return scores, f"version {champion} ({variant}), scored by the promotion authority on snapshot {self.snapshot}"

    def variant_checks(self) -> list[VariantCheck]:
        return self.checks


def download(uri: str, workdir: Path) -> Path:
    """The model folder of a registered version, downloaded once and checked: weights, configs and
    ONNX graphs only (`variants.check_model_files`)."""
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = workdir / "models" / key
    if not (target / "model").is_dir():
        import mlflow

        partial = Path(tempfile.mkdtemp(dir=workdir, prefix=".model-"))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(partial / "download")))
        folder = model_folder(local)
        variants.check_model_files(folder)
        folder.rename(partial / "model")
        shutil.rmtree(partial / "download")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    return target / "model"


def serve(name: str, candidate: str, evidence: FrozenEvidence) -> str:
    """Register the candidate into the served model: its checked folder logged anew by the
    authority, under its own experiment, as the variant it chose; the worker's logged model (its
    pickled serving code included) never reaches the served model. Made once per candidate."""
    from mlflow.exceptions import MlflowException

    client = runs.client()
    try:
        for version in client.search_model_versions(f"name = '{name}'"):
            if version.tags.get(registry.CANDIDATE_TAG) == candidate:
                return str(version.version)
    except MlflowException:
        pass  # no served model yet
    if evidence.model_dir is None:
        evidence.candidate()
    run_id = runs.start_run(EXPERIMENT, f"serve {name} candidate {candidate}", {}, {"skillops.kind": "served copy"})
    uri = registry.log_model(evidence.model_dir, run_id, evidence.served_variant)
    runs.end_run(run_id)
    import mlflow

    tags = {registry.CANDIDATE_TAG: candidate, "skillops.served_variant": evidence.served_variant}
    version = str(mlflow.register_model(uri, name, tags=tags).version)
    client.update_model_version(
        name,
        version,
        description=f"Candidate {candidate} of {registry.candidates(name)}, served as {evidence.served_variant}: "
        f"registered by the promotion authority from the files it judged. The decision is in this version's tags "
        f"and in `skillops history`.",
    )
    return version
