"""What a new champion changes for the vector indexes downstream: the recipe's documents (ESCO's
skills, an IR corpus) embedded by the champion as it is served, and how far each document's
nearest neighbours move against the previous champion's embeddings.

A team that re-embeds its index with the new champion sees the same neighbourhoods move as the
documents do among themselves here: the share of documents whose top-10 neighbours changed, the
mean overlap of the old and new top-10 (overlap@10), and the documents that moved most.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

TOP_K = 10
MOST_MOVED = 10
CHUNK = 1024  # rows of the similarity matrix at a time: a full ESCO download has 14,000 skills


class Moved(BaseModel):
    id: str
    text: str
    overlap: float  # of its old and new top-10 neighbours


class Churn(BaseModel):
    documents: int
    changed_share: float  # documents whose top-10 neighbours are not the same set
    mean_overlap: float  # mean |old top-10 & new top-10| / 10
    most_moved: list[Moved]
    previous_version: str
    version: str

    def metrics(self) -> dict[str, float]:
        return {
            "index_documents": self.documents,
            "index_changed_share": self.changed_share,
            "index_overlap_at_10": self.mean_overlap,
        }

    def markdown(self) -> str:
        lines = [
            f"Index churn, version {self.previous_version} -> {self.version}, over {self.documents} documents: "
            f"{self.changed_share:.1%} have other top-{TOP_K} neighbours; mean overlap@{TOP_K} {self.mean_overlap:.3f}.",
            "",
            f"| document | overlap@{TOP_K} |",
            "|---|---|",
            *(f"| {moved.text[:80]} | {moved.overlap:.1f} |" for moved in self.most_moved),
        ]
        return "\n".join(lines) + "\n"


def embed(model, documents: pd.DataFrame, version: str, prompt: str, batch_size: int) -> pd.DataFrame:
    """(id, text, vector, model_version) of every document, as `model` encodes documents."""
    vectors = model.encode_document(
        documents["text"].tolist(),
        prompt=prompt,
        batch_size=batch_size,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return documents.assign(vector=list(np.asarray(vectors, dtype=np.float32)), model_version=version)


def _neighbours(vectors: np.ndarray) -> np.ndarray:
    """Each row's TOP_K most similar other rows (cosine; the vectors are normalised)."""
    k = min(TOP_K, len(vectors) - 1)
    found = np.empty((len(vectors), k), dtype=np.int64)
    for start in range(0, len(vectors), CHUNK):
        similarity = vectors[start : start + CHUNK] @ vectors.T
        rows = np.arange(similarity.shape[0])
        similarity[rows, rows + start] = -np.inf  # not its own neighbour
        top = np.argpartition(-similarity, k, axis=1)[:, :k]
        found[start : start + CHUNK] = top
    return found


def churn(previous: pd.DataFrame, current: pd.DataFrame) -> Churn:
    """How the documents' neighbourhoods moved from `previous` to `current` embeddings (by id)."""
    merged = current.merge(previous[["id", "vector", "model_version"]], on="id", suffixes=("", "_previous"))
    if len(merged) < 2:
        raise ValueError("Fewer than two documents are embedded by both versions: nothing to compare.")
    new = _neighbours(np.stack(merged["vector"].to_numpy()))
    old = _neighbours(np.stack(merged["vector_previous"].to_numpy()))
    overlap = np.array([len(set(a) & set(b)) / new.shape[1] for a, b in zip(old, new, strict=True)])
    order = np.argsort(overlap)[:MOST_MOVED]
    return Churn(
        documents=len(merged),
        changed_share=float((overlap < 1).mean()),
        mean_overlap=float(overlap.mean()),
        most_moved=[
            Moved(id=str(merged["id"].iloc[i]), text=merged["text"].iloc[i], overlap=float(overlap[i])) for i in order
        ],
        previous_version=str(merged["model_version_previous"].iloc[0]),
        version=str(merged["model_version"].iloc[0]),
    )


def write(embeddings: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    embeddings.to_parquet(path, index=False)
    return path
