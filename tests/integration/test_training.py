"""Two optimizer steps on the tiny model change its embeddings; every evaluator is sentence-transformers' own."""

import json

import numpy as np
import pandas as pd
import pytest

from skillops.config import EvaluationConfig, LossConfig, Prompts, TrainingConfig
from skillops.judging.evaluation import evaluate
from skillops.training.modeling import load_model
from skillops.training.trainer import TrainingSpec, train_model


@pytest.mark.parametrize(
    ("loss", "columns"),
    [
        (
            "mnrl",
            {
                "anchor": [f"software developer {i}" for i in range(8)],
                "positive": [f"programming skill {i}" for i in range(8)],
            },
        ),
        (
            "cached_mnrl",
            {
                "anchor": [f"data analyst {i}" for i in range(8)],
                "positive": [f"statistics {i}" for i in range(8)],
                "negative_1": [f"welding {i}" for i in range(8)],
                "negative_2": [f"baking {i}" for i in range(8)],
            },
        ),
        (
            "cosine_similarity",
            {
                "sentence1": [f"web developer {i}" for i in range(8)],
                "sentence2": [f"JavaScript {i}" for i in range(8)],
                "score": [i / 8 for i in range(8)],
            },
        ),
    ],
)
def test_two_steps_change_the_embeddings(tiny_bert, tmp_path, loss, columns):
    pd.DataFrame(columns).to_parquet(tmp_path / "train.parquet")
    texts = ["ICT security administrator", "manage firewall rules"]
    before = load_model(str(tiny_bert)).encode(texts)

    config = TrainingConfig(batch_size=4, max_steps=2, learning_rate=1e-3, max_seq_length=32)
    prompts = Prompts(query="query: ", document="passage: ")
    result = train_model(
        TrainingSpec(
            base_model=str(tiny_bert),
            train_path=tmp_path / "train.parquet",
            config=config,
            loss=LossConfig(name=loss, mini_batch_size=2),
            prompts=prompts,
            output_dir=tmp_path / "out",
        )
    )

    assert result.steps == 2
    assert result.final_loss is not None and np.isfinite(result.final_loss)
    trained = load_model(str(result.model_dir))
    after = trained.encode(texts)
    assert after.shape == before.shape
    assert not np.allclose(before, after, atol=1e-4)
    assert trained.prompts["query"] == "query: "  # saved with the model for whoever loads it


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


PROMPTS = Prompts(query="query: ", document="passage: ")


def test_reranking_scores_equal_sentence_transformers(tiny_bert, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator

    samples = [
        {"query": "data analyst", "positive": ["statistics", "SQL"], "negative": ["welding", "baking", "SQL Server"]},
        {"query": "web developer", "positive": ["JavaScript"], "negative": ["statistics", "nursing"]},
    ]
    model = load_model(str(tiny_bert))
    config = EvaluationConfig(at_k=100)
    ours = evaluate(model, _write(tmp_path / "s.json", samples), config, PROMPTS)
    prompted = [
        {
            "query": "query: " + s["query"],
            "positive": ["passage: " + t for t in s["positive"]],
            "negative": ["passage: " + t for t in s["negative"]],
        }
        for s in samples
    ]
    theirs = RerankingEvaluator(prompted, at_k=100, write_csv=False)(model)
    assert set(ours) == {"map", "mrr_at_100", "ndcg_at_100"}
    assert ours == pytest.approx(
        {"map": theirs["map"], "mrr_at_100": theirs["mrr@100"], "ndcg_at_100": theirs["ndcg@100"]}, abs=1e-6
    )
    # A model saved with the recipe's prompts scores the same: they are not added a second time.
    model.prompts = {"query": "query: ", "document": "passage: "}
    assert evaluate(model, tmp_path / "s.json", config, PROMPTS) == pytest.approx(ours, abs=1e-6)


def test_retrieval_scores_equal_sentence_transformers(tiny_bert, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    data = {
        "queries": {"q0": "data analyst", "q1": "web developer"},
        "corpus": {"d0": "statistics", "d1": "JavaScript", "d2": "welding", "d3": "SQL"},
        "relevant_docs": {"q0": ["d0", "d3"], "q1": ["d1"]},
    }
    model = load_model(str(tiny_bert))
    config = EvaluationConfig(evaluator="information_retrieval", primary_metric="cosine_ndcg_at_10")
    ours = evaluate(model, _write(tmp_path / "ir.json", data), config, PROMPTS)
    theirs = InformationRetrievalEvaluator(
        data["queries"],
        data["corpus"],
        {q: set(d) for q, d in data["relevant_docs"].items()},
        query_prompt="query: ",
        corpus_prompt="passage: ",
        write_csv=False,
    )(model)
    assert set(ours) == set(config.metric_names())
    for name, value in theirs.items():
        assert ours[name.replace("@", "_at_")] == pytest.approx(value, abs=1e-6)


def test_similarity_scores_equal_sentence_transformers(tiny_bert, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    data = {
        "sentence1": ["data analyst", "web developer", "baker", "nurse"],
        "sentence2": ["statistician", "JavaScript", "pastry", "welding"],
        "score": [0.9, 0.8, 0.7, 0.1],
    }
    model = load_model(str(tiny_bert))
    config = EvaluationConfig(evaluator="embedding_similarity", primary_metric="spearman_cosine")
    ours = evaluate(model, _write(tmp_path / "sts.json", data), config, Prompts())
    theirs = EmbeddingSimilarityEvaluator(data["sentence1"], data["sentence2"], data["score"], write_csv=False)(model)
    assert ours == pytest.approx(
        {"pearson_cosine": theirs["pearson_cosine"], "spearman_cosine": theirs["spearman_cosine"]}, abs=1e-6
    )


def test_an_interrupted_training_resumes_from_its_last_checkpoint(tiny_bert, tmp_path):
    from transformers import TrainerCallback

    pd.DataFrame(
        {"anchor": [f"developer {i}" for i in range(16)], "positive": [f"skill {i}" for i in range(16)]}
    ).to_parquet(tmp_path / "train.parquet")
    config = TrainingConfig(batch_size=4, max_steps=6, checkpoint_every_steps=2, learning_rate=1e-3, max_seq_length=32)

    class Crash(TrainerCallback):  # stands in for a killed process, after the step-4 checkpoint
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train_model(
            TrainingSpec(
                base_model=str(tiny_bert),
                train_path=tmp_path / "train.parquet",
                config=config,
                loss=LossConfig(),
                prompts=Prompts(),
                output_dir=tmp_path / "out",
            ),
            callbacks=[Crash()],
        )
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-4").is_dir()
    # A kill during a save leaves a checkpoint without trainer_state.json: it is passed over.
    (tmp_path / "out" / "checkpoints" / "checkpoint-5").mkdir()

    result = train_model(
        TrainingSpec(
            base_model=str(tiny_bert),
            train_path=tmp_path / "train.parquet",
            config=config,
            loss=LossConfig(),
            prompts=Prompts(),
            output_dir=tmp_path / "out",
        )
    )
    assert result.resumed_from_step == 4 and result.steps == 6
    assert not (tmp_path / "out" / "checkpoints").exists()  # the saved model replaces them
    # Run once more: the finished training is not repeated.
    again = train_model(
        TrainingSpec(
            base_model=str(tiny_bert),
            train_path=tmp_path / "train.parquet",
            config=config,
            loss=LossConfig(),
            prompts=Prompts(),
            output_dir=tmp_path / "out",
        )
    )
    assert again == result


def test_length_grouped_batches_cover_every_pair_once_with_little_padding():
    """Cosine-similarity training batches pairs of about the same length: every pair once per
    epoch, a new order each epoch, and far less padding than batches drawn at random."""
    from datasets import Dataset

    from skillops.training.batches import length_grouped_batches

    generator = np.random.default_rng(0)
    first, second = generator.integers(1, 300, 1000), generator.integers(1, 300, 1000)
    pairs = Dataset.from_dict(
        {"sentence1": ["x" * n for n in first], "sentence2": ["y" * n for n in second], "score": [0.5] * 1000}
    )
    sampler = length_grouped_batches(pairs, 16, False, ["score"], None, 42)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    lengths = first + second

    def padding(groups):
        return sum(max(lengths[i] for i in group) * len(group) - sum(lengths[i] for i in group) for group in groups)

    shuffled = generator.permutation(1000)
    assert padding(batches) * 10 < padding([shuffled[i : i + 16] for i in range(0, 1000, 16)])
    sampler.set_epoch(1)
    assert list(sampler)[0] != batches[0]


@pytest.mark.parametrize(
    "group_by_length, sampler", [(True, "LengthGroupedBatchSampler"), (False, "DefaultBatchSampler")]
)
def test_group_by_length_picks_the_cosine_trainings_batch_sampler(tiny_bert, tmp_path, group_by_length, sampler):
    from transformers import TrainerCallback

    pd.DataFrame(
        {"sentence1": [f"nurse {i}" * i for i in range(8)], "sentence2": ["care"] * 8, "score": [0.5] * 8}
    ).to_parquet(tmp_path / "train.parquet")
    used = []

    class SeeSampler(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            used.append(type(train_dataloader.batch_sampler).__name__)

    config = TrainingConfig(batch_size=4, max_steps=1, max_seq_length=32, group_by_length=group_by_length)
    train_model(
        TrainingSpec(
            base_model=str(tiny_bert),
            train_path=tmp_path / "train.parquet",
            config=config,
            loss=LossConfig(name="cosine_similarity"),
            prompts=Prompts(),
            output_dir=tmp_path / "out",
        ),
        callbacks=[SeeSampler()],
    )
    assert used == [sampler]
