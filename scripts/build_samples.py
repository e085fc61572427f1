"""Build the bundled sample of each table recipe from the ESCO ICT sample (src/skillops/data/esco-ict).

    python scripts/build_samples.py [--esco src/skillops/data/esco-ict] [--out src/skillops/data/samples]

Deterministic (seeded), so re-running it reproduces the committed files byte for byte. Each
sample has the data shape of its model card, built from real ESCO text:

    job-skills.csv                (004) occupation description -> one of its skills      pairs
    course-skill-retrieval.jsonl  (001) skill description -> skill label                 pairs; the recipe mines negatives
    term-retrieval.parquet        (003) skill alternative label -> preferred label       pairs
    resume-job-similarity.csv     (002) two occupation descriptions, scored by the       scored pairs
                                        Jaccard overlap of their skill sets, as a rank in (0, 1]

and the golden set of the ESCO recipe (--golden, default src/skillops/data/golden):

    esco-ict-descriptions.csv     (000) the first sentence of an occupation's description -> each
                                        of its skills; frozen: scored every run, never trained on

ESCO is (c) European Union, CC BY 4.0 (https://esco.ec.europa.eu): keep the attribution.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from skillops.inputs.tables import write_table

SEED = 42
MAX_ALT_LABELS_PER_SKILL = 2  # keeps term-retrieval near 1,000 rows: a CPU run in minutes
SIMILARITY_PAIRS = 1200


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _text(value: str) -> str:
    return " ".join(value.split())


def _description_skills(occupations, skills, relations, describe) -> list[tuple[str, str]]:
    """(describe(occupation description), skill label) for every relation of a described occupation."""
    labels = skills.set_index("conceptUri").preferredLabel
    descriptions = occupations.set_index("conceptUri").description
    return [
        (describe(descriptions[o]), _text(labels[s]))
        for o, s in relations[["occupationUri", "skillUri"]].itertuples(index=False)
        if o in descriptions.index and s in labels.index and descriptions[o].strip()
    ]


def job_skills(occupations, skills, relations) -> pd.DataFrame:
    pairs = _description_skills(occupations, skills, relations, _text)
    return pd.DataFrame(pairs, columns=["job_description", "skill"]).drop_duplicates(ignore_index=True)


def first_sentence(text: str) -> str:
    text = _text(text)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def esco_golden(occupations, skills, relations) -> pd.DataFrame:
    """Occupation -> skills again, asked another way: the query is the first sentence of the
    occupation's description, which training never sees (it trains on labels). A refresh that
    pairs occupations with the wrong skills scores worse here, whatever its own test split says."""
    pairs = _description_skills(occupations, skills, relations, first_sentence)
    frame = pd.DataFrame(pairs, columns=["anchor", "positive"]).drop_duplicates(ignore_index=True)
    return frame.sort_values(["anchor", "positive"], ignore_index=True)


def course_skill_retrieval(skills) -> pd.DataFrame:
    frame = skills[skills.description.str.strip() != ""]
    return pd.DataFrame(
        {"skill_description": frame.description.map(_text), "skill_label": frame.preferredLabel.map(_text)}
    ).drop_duplicates(ignore_index=True)


def term_retrieval(skills) -> pd.DataFrame:
    rows = []
    for preferred, alternatives in skills[["preferredLabel", "altLabels"]].itertuples(index=False):
        # A form that differs from the preferred label only in case is no retrieval question.
        forms = [
            _text(a)
            for a in alternatives.splitlines()
            if _text(a) and _text(a).casefold() != _text(preferred).casefold()
        ]
        rows += [{"query": form, "passage": _text(preferred)} for form in forms[:MAX_ALT_LABELS_PER_SKILL]]
    frame = pd.DataFrame(rows).drop_duplicates(ignore_index=True)
    # An alternative label shared by two skills has no single right answer: leave it out.
    return frame[~frame["query"].duplicated(keep=False)].reset_index(drop=True)


def resume_job_similarity(occupations, relations) -> pd.DataFrame:
    skills_of = relations.groupby("occupationUri").skillUri.apply(set).to_dict()
    descriptions = occupations.set_index("conceptUri").description.map(_text)
    uris = sorted(uri for uri in skills_of if descriptions.get(uri))
    rng = np.random.default_rng(SEED)
    scored = []
    for a, b in itertools.combinations(uris, 2):
        jaccard = len(skills_of[a] & skills_of[b]) / len(skills_of[a] | skills_of[b])
        scored.append((a, b, jaccard))
    # Every overlapping pair is informative; add as many non-overlapping ones, then subsample.
    overlapping = [row for row in scored if row[2] > 0]
    disjoint = [row for row in scored if row[2] == 0]
    picked = overlapping + [
        disjoint[i] for i in rng.choice(len(disjoint), size=min(len(disjoint), len(overlapping)), replace=False)
    ]
    picked = [
        picked[i] for i in sorted(rng.choice(len(picked), size=min(SIMILARITY_PAIRS, len(picked)), replace=False))
    ]
    # Raw Jaccard values sit near 0 for most pairs (median 0.013), and CosineSimilarityLoss then
    # pulls nearly every cosine toward 0: fine-tuning on them lowered Spearman from 0.56 to 0.47.
    # Their rank keeps the order and spreads the targets over (0, 1] (same pairs: 0.56 -> 0.75).
    ranks = rankdata([score for _, _, score in picked], method="average") / len(picked)
    rows = []
    for (a, b, _), score in zip(picked, ranks, strict=True):
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        rows.append(
            {
                "resume_section": descriptions[first],
                "job_section": descriptions[second],
                "score": round(float(score), 4),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--esco", type=Path, default=Path("src/skillops/data/esco-ict"))
    parser.add_argument("--out", type=Path, default=Path("src/skillops/data/samples"))
    parser.add_argument("--golden", type=Path, default=Path("src/skillops/data/golden"))
    args = parser.parse_args()
    occupations = _read(args.esco / "occupations_en.csv")
    skills = _read(args.esco / "skills_en.csv")
    relations = _read(args.esco / "occupationSkillRelations_en.csv")
    args.out.mkdir(parents=True, exist_ok=True)

    samples = {
        "job-skills.csv": job_skills(occupations, skills, relations),
        "course-skill-retrieval.jsonl": course_skill_retrieval(skills),
        "term-retrieval.parquet": term_retrieval(skills),
        "resume-job-similarity.csv": resume_job_similarity(occupations, relations),
    }
    args.golden.mkdir(parents=True, exist_ok=True)
    golden = {args.golden / "esco-ict-descriptions.csv": esco_golden(occupations, skills, relations)}
    for path, frame in {**{args.out / name: frame for name, frame in samples.items()}, **golden}.items():
        write_table(frame, path)
        print(f"{path}: {len(frame)} rows, columns {list(frame.columns)}")


if __name__ == "__main__":
    main()
