"""How long validating a full-size ESCO download takes, next to just reading the same files.

    .venv/bin/python bench/validation.py [--occupations 3000 --skills 14000 --relations 130000]

Writes ESCO-layout files of the full download's size (real ICT-sample text, repeated under new
URIs) to a temporary folder, then times: reading the three CSVs with pandas (the baseline),
the raw-file suites (`validate_recipe_data`), and building + checking the prepared task
(`build_task` + `validate_prepared`: split, eval sets, leakage, duplicates, token lengths).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "skillops" / "data" / "esco-ict"


def write_full_size(target: Path, n_occupations: int, n_skills: int, n_relations: int) -> None:
    rng = np.random.default_rng(0)
    occupations = pd.read_csv(SAMPLE / "occupations_en.csv", dtype=str, keep_default_na=False)
    skills = pd.read_csv(SAMPLE / "skills_en.csv", dtype=str, keep_default_na=False)

    def grow(frame: pd.DataFrame, n: int, kind: str) -> pd.DataFrame:
        # Numbered copies keep labels distinct, as ESCO's are; URIs are new and unique.
        rows = frame.iloc[np.arange(n) % len(frame)].reset_index(drop=True)
        copy = np.arange(n) // len(frame)
        suffix = pd.Series([f" {c}" if c else "" for c in copy])
        return rows.assign(
            conceptUri=[f"http://data.europa.eu/esco/{kind}/bench-{i}" for i in range(n)],
            preferredLabel=rows.preferredLabel + suffix,
        )

    big_occupations = grow(occupations, n_occupations, "occupation")
    big_skills = grow(skills, n_skills, "skill")
    pairs = set()
    while len(pairs) < n_relations:
        o = rng.integers(0, n_occupations, n_relations)
        s = rng.integers(0, n_skills, n_relations)
        pairs.update(zip(o.tolist(), s.tolist(), strict=True))
    pairs = sorted(pairs)[:n_relations]
    relations = pd.DataFrame(
        {
            "occupationUri": [big_occupations.conceptUri[o] for o, _ in pairs],
            "relationType": "essential",
            "skillType": "skill/competence",
            "skillUri": [big_skills.conceptUri[s] for _, s in pairs],
        }
    )
    big_occupations.to_csv(target / "occupations_en.csv", index=False)
    big_skills.to_csv(target / "skills_en.csv", index=False)
    relations.to_csv(target / "occupationSkillRelations_en.csv", index=False)


def timed(label: str, work) -> float:
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    print(f"{label:62} {seconds:7.2f} s", flush=True)
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--occupations", type=int, default=3000)
    parser.add_argument("--skills", type=int, default=14000)
    parser.add_argument("--relations", type=int, default=130000)
    args = parser.parse_args()

    from skillops.config import Recipe
    from skillops.inputs import preparation
    from skillops.inputs.esco import load_esco
    from skillops.inputs.validation import validate_prepared, validate_recipe_data

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "esco"
        folder.mkdir()
        write_full_size(folder, args.occupations, args.skills, args.relations)
        print(f"{args.occupations} occupations, {args.skills} skills, {args.relations} relations in {folder}")
        recipe = Recipe(name="bench", data={"path": str(folder)})
        validate_recipe_data(Recipe(name="warm-up", data={"path": str(SAMPLE)}))  # GX context, imports

        baseline, _ = timed("baseline: pandas reads the three CSV files", lambda: load_esco(folder))
        suites, report = timed(
            "validate raw files (GX suites, relation integrity)", lambda: validate_recipe_data(recipe)
        )
        assert report.success, report.markdown()
        build, task = timed("build the task (split, pairs, reranking sets)", lambda: preparation.build_task(recipe))
        paths = preparation.write_task(task, Path(tmp) / "prepared", {})
        checks, prepared = timed(
            "validate prepared data (suites, leakage, duplicates, lengths)",
            lambda: validate_prepared(task, recipe, paths),
        )
        print(
            f"\nraw-file validation: {suites:.1f} s = {suites / baseline:.1f}x the time to read the files; "
            f"prepared-data checks: {checks:.1f} s on {len(task.train)} training pairs "
            f"({len(prepared.failures)} failures, {len(prepared.warnings)} warnings)"
        )


if __name__ == "__main__":
    main()
