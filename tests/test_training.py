"""Two optimizer steps on the tiny model change its embeddings, and evaluation uses ST's evaluator."""

import numpy as np
import pandas as pd

from skillops.config import EvaluationConfig, TrainingConfig
from skillops.evaluation import evaluate, reranking_evaluator
from skillops.modeling import load_model
from skillops.training import train_pairs


def test_two_steps_change_the_embeddings(tiny_bert, tmp_path):
    pairs = pd.DataFrame(
        {
            "anchor": [f"software developer {i}" for i in range(8)],
            "positive": [f"programming skill {i}" for i in range(8)],
        }
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    texts = ["ICT security administrator", "manage firewall rules"]
    before = load_model(str(tiny_bert)).encode(texts)

    config = TrainingConfig(batch_size=4, max_steps=2, learning_rate=1e-3, max_seq_length=32)
    result = train_pairs(str(tiny_bert), tmp_path / "pairs.parquet", config, tmp_path / "out")

    assert result.steps == 2
    assert result.final_loss is not None and np.isfinite(result.final_loss)
    after = load_model(str(result.model_dir)).encode(texts)
    assert after.shape == before.shape
    assert not np.allclose(before, after, atol=1e-4)


def test_metric_names_are_sanitised_and_equal_to_sentence_transformers(tiny_bert, tmp_path):
    import json

    samples = [
        {"query": "data analyst", "positive": ["statistics", "SQL"], "negative": ["welding", "baking", "SQL Server"]},
        {"query": "web developer", "positive": ["JavaScript"], "negative": ["statistics", "nursing"]},
    ]
    path = tmp_path / "samples.json"
    path.write_text(json.dumps(samples))
    model = load_model(str(tiny_bert))
    config = EvaluationConfig(at_k=100)
    ours = evaluate(model, path, config)
    theirs = reranking_evaluator(path, config)(model)
    assert set(ours) == {"map", "mrr_at_100", "ndcg_at_100"}
    assert ours["map"] == theirs["map"] and ours["ndcg_at_100"] == theirs["ndcg@100"]
