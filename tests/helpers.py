"""Helpers the tests share: paths, the small ESCO extract, tiny random models, recipe files,
CSV edits, free ports and waiting for a server. Fixtures that use them are in conftest.py."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUNDLED_ESCO = REPO / "src" / "skillops" / "data" / "esco-ict"
TINY_OCCUPATIONS = 24


def small_esco_extract(target: Path) -> Path:
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


def start_mlflow_server(folder: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port`, its runs in folder/server.db and its artifacts (proxied)
    in folder/served-artifacts, answering before this returns; a second start reuses both."""
    # No server-side jobs: skillops queues none, and their seven consumer processes cost the suite.
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "a") as output:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/server.db",
             "--artifacts-destination", (folder / "served-artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    wait_for_http(f"http://127.0.0.1:{port}/health", server, log, "MLflow server")
    return server


def start_prefect_server(env: dict, log: Path) -> subprocess.Popen:
    """`prefect server start` on the port of env's PREFECT_API_URL (its state in env's PREFECT_HOME),
    answering before this returns; its output is appended to `log`."""
    port = env["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0]
    with open(log, "a") as output:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    wait_for_http(f"http://127.0.0.1:{port}/api/health", server, log, "Prefect server")
    return server


def wait_until(condition, what: str, timeout: float = 300, explain=lambda: ""):
    """condition()'s first truthy value, polled every 2 s; fails with `explain()` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}\n{explain()}")


def free_port() -> int:
    """A port nothing listens on, below the kernel's range for outgoing connections. A port from
    bind(0) comes from that range, and with tests side by side another process's connection took
    one before the test's server bound it ("Address already in use"). Room is left above it for
    the stack's backend ports (MLFLOW_PORT + 10100, scripts/stack.sh)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.Random().sample(range(15000, low - 10100), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the kernel's ephemeral range")


class Levels:
    """What a judgement is made from, written down instead of scored: the candidate's level and
    each served version's (None: the base model's), as 12 queries around that level. `seen`
    lists the champions the gate asked about, in order."""

    def __init__(self, levels: dict[str | None, float], candidate: float, seen: list | None = None):
        self.levels, self.level, self.seen = levels, candidate, seen if seen is not None else []

    @staticmethod
    def scores(level: float):
        import numpy as np

        from skillops.judging.evaluation import QueryScores

        values = np.linspace(level - 0.1, level + 0.1, 12).tolist()
        per_query = {metric: values for metric in ("map", "mrr_at_100", "ndcg_at_100")}
        return QueryScores(
            evaluator="reranking", ids=[str(i) for i in range(12)], slices=[""] * 12, per_query=per_query
        )

    def candidate(self):
        return {"test": self.scores(self.level)}

    def reference(self, champion):
        self.seen.append(champion)
        return {"test": self.scores(self.levels[champion])}, None


# The policy a model seeded by `seed_champion` starts with: no run's is weaker, so each run is
# judged by its own recipe's.
SEED_POLICY = {
    "promotion": {
        "significance_level": None,
        "secondary_tolerance": 1.0,
        "slice_tolerance": 1.0,
        "golden_tolerance": 1.0,
        "min_slice_queries": 100000,
        "resamples": 100,
    },
    "evaluator": "reranking",
    "primary_metric": "map",
    "at_k": 100,
    "max_variant_drop": 0.99,
}


def seed_champion(model_dir: Path, name: str) -> str:
    """The model a team had before skillops, registered as a candidate of `name` and made its
    champion by the local gate (written-down scores by which it beats the base model); returns its
    served version. Runs against the store MLFLOW_TRACKING_URI names."""
    from skillops import gate
    from skillops.judging.promotion import ModelPolicy
    from skillops.tracking import registry, runs

    run_id = runs.start_run(name, "previous champion", {})
    candidate = registry.register(model_dir, run_id, name, {})
    runs.end_run(run_id)
    # Nothing else promotes while a test seeds its champion: that is the lock every machine holds.
    authority = gate.local(shared_lock="the test seeding the champion")
    authority.first_policy(name, ModelPolicy.model_validate(SEED_POLICY), "the model before skillops")
    return authority.judge(name, candidate, Levels({None: 0.0}, 1.0)).served_version


# The same in a process of its own (another machine's, with its own environment): argv is the
# model folder and the model name; the tests folder is on its path.
SEED_CHAMPION = "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; import helpers; helpers.seed_champion(Path(sys.argv[1]), sys.argv[2])"


def served_candidates(client, name: str) -> dict[str, int]:
    """Served version of `name` -> the candidate version it is a copy of."""
    return {
        str(v.version): int(v.tags["skillops.candidate_version"])
        for v in client.search_model_versions(f"name = '{name}'")
    }


def parent_pid(pid: int) -> int | None:
    """The parent of process `pid` (from /proc), None once it has ended."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
