"""Fixtures: a tiny random BERT sentence model, a small real ESCO extract, a throwaway MLflow store.

Everything is offline: HF_HUB_OFFLINE makes a stray hub call fail at once instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUNDLED_ESCO = REPO / "src" / "skillops" / "data" / "esco-ict"
TINY_OCCUPATIONS = 24


def _small_esco(target: Path) -> Path:
    """The first occupations of the bundled sample with every skill they link to: real text, small."""
    occupations = pd.read_csv(BUNDLED_ESCO / "occupations_en.csv", dtype=str, keep_default_na=False)
    skills = pd.read_csv(BUNDLED_ESCO / "skills_en.csv", dtype=str, keep_default_na=False)
    relations = pd.read_csv(BUNDLED_ESCO / "occupationSkillRelations_en.csv", dtype=str, keep_default_na=False)
    kept = occupations.head(TINY_OCCUPATIONS)
    links = relations[relations.occupationUri.isin(kept.conceptUri)]
    target.mkdir(parents=True)
    kept.to_csv(target / "occupations_en.csv", index=False)
    skills[skills.conceptUri.isin(links.skillUri)].to_csv(target / "skills_en.csv", index=False)
    links.to_csv(target / "occupationSkillRelations_en.csv", index=False)
    return target


def edit_csv(path: Path, change) -> None:
    """Rewrite a CSV through `change(frame) -> frame`, keeping every cell as text."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame).to_csv(path, index=False)


def set_cell(path: Path, row: int, column: str, value: str) -> None:
    def change(frame):
        frame.loc[row, column] = value
        return frame

    edit_csv(path, change)


@pytest.fixture(scope="session")
def small_esco(tmp_path_factory) -> Path:
    return _small_esco(tmp_path_factory.mktemp("esco") / "esco-small")


@pytest.fixture
def esco_copy(small_esco, tmp_path) -> Path:
    """A writable copy, for tests that break files."""
    return Path(shutil.copytree(small_esco, tmp_path / "esco"))


def _corpus_texts() -> list[str]:
    """Real ESCO text (labels and descriptions) to train the tiny models' vocabularies on."""
    texts = ["query: passage:"]
    for name in ("occupations_en.csv", "skills_en.csv"):
        frame = pd.read_csv(BUNDLED_ESCO / name, dtype=str, keep_default_na=False)
        texts += frame.preferredLabel.tolist() + frame.altLabels.tolist() + frame.description.tolist()
    return texts


def build_tiny_model(architecture: str, target: Path) -> Path:
    """A 2-layer, 32-wide random sentence model of one of the cards' architectures, offline.

    bert (card 004, MiniLM is a BertModel): WordPiece vocabulary; mpnet (card 002): WordPiece with
    MPNet's special tokens; xlm-roberta (cards 000, 001, 003): a Unigram (sentencepiece-style)
    vocabulary. Seeded, so every session builds the same model.
    """
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if architecture == "xlm-roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        tokenizer.train_from_iterator(
            _corpus_texts(), trainers.UnigramTrainer(vocab_size=1000, special_tokens=specials, unk_token="<unk>")
        )
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
        hf_tokenizer = transformers.XLMRobertaTokenizerFast(
            tokenizer_object=tokenizer,
            bos_token="<s>",
            eos_token="</s>",
            sep_token="</s>",
            cls_token="<s>",
            unk_token="<unk>",
            pad_token="<pad>",
            mask_token="<mask>",
        )
        config = transformers.XLMRobertaConfig(
            vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=130, pad_token_id=1, **size
        )
        model_class = transformers.XLMRobertaModel
    else:
        mpnet = architecture == "mpnet"
        specials = (
            ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] if mpnet else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        )
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.train_from_iterator(
            _corpus_texts(), trainers.WordPieceTrainer(vocab_size=1000, special_tokens=specials)
        )
        cls, sep = ("<s>", "</s>") if mpnet else ("[CLS]", "[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
        )
        if mpnet:
            hf_tokenizer = transformers.MPNetTokenizerFast(
                tokenizer_object=tokenizer,
                bos_token="<s>",
                eos_token="</s>",
                sep_token="</s>",
                cls_token="<s>",
                unk_token="[UNK]",
                pad_token="<pad>",
                mask_token="<mask>",
            )
            config = transformers.MPNetConfig(
                vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=130, pad_token_id=1, **size
            )
            model_class = transformers.MPNetModel
        else:
            hf_tokenizer = transformers.BertTokenizerFast(tokenizer_object=tokenizer)
            config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=128, **size)
            model_class = transformers.BertModel
    hf_dir = target / "hf"
    hf_tokenizer.save_pretrained(hf_dir)
    torch.manual_seed(int(os.environ.get("SKILLOPS_TEST_SEED", "0")))  # the same random model every session
    model_class(config).save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    model.save(str(target / "model"))
    return target / "model"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """architecture -> a tiny random model of it, built on first use."""
    built: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in built:
            built[architecture] = build_tiny_model(architecture, tmp_path_factory.mktemp(f"tiny-{architecture}"))
        return built[architecture]

    return get


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> Path:
    """A fresh sqlite MLflow store, and a working directory of its own for outputs/."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    monkeypatch.delenv("SKILLOPS_ARTIFACT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "mlruns"


def tiny_recipe_yaml(path: Path, esco_dir: Path, model_dir: Path, **sections) -> Path:
    """A recipe for seconds-long runs on the tiny model: 2 tuning trials of a few steps."""
    import yaml

    recipe = {
        "name": "tiny-esco",
        "base_model": str(model_dir),
        "registered_model_name": "tiny-esco",
        "data": {"path": str(esco_dir), "eval_negatives": 20},
        "training": {"epochs": 1, "batch_size": 8, "max_seq_length": 64, "max_steps": 4},
        "search": {"n_trials": 2, "batch_sizes": [8], "epochs": 0.5, "evals_per_trial": 2},
        # The small ESCO fixture has 4 test queries: no paired test can reach p < 0.05 on 4
        # queries (the smallest exact p is 1/16), and MRR on 4 queries jumps by 0.25 at a time.
        # Flow tests that expect a promotion judge by the primary metric alone; the policy's
        # checks have their own tests (test_promotion.py, test_gate.py).
        "promotion": {"min_delta": 0.0, "significance_level": None, "secondary_tolerance": 1.0},
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(recipe), "utf-8")
    return path


def wait_for_http(url: str, process: subprocess.Popen, log: Path, what: str, timeout: float = 180) -> None:
    """Until `url` answers; fails with the end of the process's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"{what} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server on a free 127.0.0.1 port, with its own home, MLflow store and outputs."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "SKILLOPS_OUTPUTS_DIR": str(tmp_path / "outputs"),
        "HF_HUB_OFFLINE": "1",
    }
    logs = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    processes = [server]
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", server, tmp_path / "server.log", "Prefect server")
        yield env, processes, tmp_path
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()
