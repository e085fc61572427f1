"""The recipe: one typed config that YAML files, CLI options and Prefect parameters all parse into.

Everything is validated here, before any data is read or any model is loaded, so that a typo in a
recipe costs a second and not a training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from skillops.errors import RecipeError
from skillops.uris import has_password, safe_uri

PACKAGE_DIR = Path(__file__).parent
BUILTIN_RECIPES_DIR = PACKAGE_DIR / "recipes"


class _Strict(BaseModel):
    # Unknown keys are almost always typos ("learning_rte"); refuse them instead of ignoring.
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Strict):
    validation: float = Field(0.15, gt=0, lt=1, description="Share of groups (occupations, anchors) for tuning.")
    test: float = Field(0.15, gt=0, lt=1, description="Share of groups for the promotion gate.")
    seed: int = 42

    @model_validator(mode="after")
    def _leave_room_for_training(self) -> SplitConfig:
        if self.validation + self.test >= 0.9:
            raise ValueError(
                f"split.validation + split.test = {self.validation + self.test:.2f} leaves under 10% "
                "of the data for training; lower them (defaults 0.15 + 0.15)."
            )
        return self


# The columns each data shape needs, under skillops' own names; `data.columns` maps them to the
# names in a user's file.
SHAPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "pairs": ("anchor", "positive"),
    "triplets": ("anchor", "positive", "negatives"),
    "scored_pairs": ("sentence1", "sentence2", "score"),
}

# Optional column of every shape: a label per row (language, sector); a query's slice is that of
# its first row. Used only to judge candidates slice by slice, never for training.
SLICE_COLUMN = "slice"


class MiningConfig(_Strict):
    """Hard negatives mined with sentence-transformers' `mine_hard_negatives` and the base model."""

    num_negatives: int = Field(3, ge=1, le=50)
    range_min: int = Field(0, ge=0, description="Skip this many most similar texts first.")
    range_max: int | None = Field(50, ge=1, description="Only pick among this many most similar texts.")
    relative_margin: float | None = Field(
        0.05,
        ge=0,
        lt=1,
        description="A negative must score at most (1 - margin) x the positive's score: keeps "
        "near-synonyms of the positive out of the negatives.",
    )
    sampling_strategy: Literal["top", "random"] = "top"


def resolve_path(path: str) -> Path:
    """A recipe's file path on this machine: as written, or among the samples bundled with
    skillops. They ship inside the package, so the built-in recipes' `data/...` paths work from
    any folder and from an installed wheel; the recipe keeps the relative spelling, so its
    fingerprint is the same on every machine."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and not candidate.exists() and (PACKAGE_DIR / candidate).exists():
        return PACKAGE_DIR / candidate
    return candidate


class DataConfig(_Strict):
    format: Literal["esco", "table"] = Field(
        "esco",
        description="esco: the official ESCO CSV layout; table: CSV, JSONL, Parquet, a "
        "saved `datasets` folder or a Hugging Face dataset name.",
    )
    path: str = Field(
        "data/esco-ict",
        description="ESCO folder, table file or folder, or hub dataset name. A relative path is looked up in the "
        "working directory, then among the samples bundled with skillops (data/esco-ict, data/samples/...).",
    )
    shape: Literal["pairs", "triplets", "scored_pairs"] = "pairs"
    columns: dict[str, str | list[str]] = Field(
        {},
        description="skillops name -> column in the file, e.g. {anchor: description, positive: "
        "label, negatives: [neg1, neg2]}; names not given are expected as is. Optionally `slice`: a "
        "column (language, sector) whose values split the test queries into slices that the "
        "promotion gate checks one by one.",
    )
    hub_split: str = Field("train", description="Split to read when `path` is a hub dataset name.")
    language: str = Field("en", description="ESCO only: suffix of the files, occupations_<language>.csv.")
    max_alt_labels: int | None = Field(
        None, ge=0, description="ESCO only: alternative labels joined into an occupation's anchor (None: all)."
    )
    esco_version: str | None = Field(
        None,
        description="ESCO only: the ESCO release the data is (e.g. v1.2.0), recorded with every run and version; "
        'default: read from the download\'s folder name ("ESCO dataset - v1.2.0 - ...").',
    )
    eval_negatives: int = Field(
        100, ge=1, description="Reranking: texts that are not relevant, ranked with each held-out query's positives."
    )
    mine_negatives: MiningConfig | None = Field(
        None, description="Mine hard negatives for pairs data (turns pairs into anchor, positive, negatives)."
    )
    split: SplitConfig = SplitConfig()

    @property
    def location(self) -> Path:
        return resolve_path(self.path)

    @model_validator(mode="after")
    def _columns_fit_the_shape(self) -> DataConfig:
        if self.format == "esco":
            if self.shape != "pairs" or self.columns:
                raise ValueError(
                    "ESCO data is always occupation -> skill pairs: remove data.shape and data.columns, "
                    "or set data.format: table for other files."
                )
            return self
        expected = SHAPE_COLUMNS[self.shape]
        unknown = sorted(set(self.columns) - set(expected) - {SLICE_COLUMN})
        if unknown:
            raise ValueError(
                f"data.columns names {unknown}, which a {self.shape!r} data set does not have; "
                f"map these instead: {list(expected)} (and, optionally, {SLICE_COLUMN!r})."
            )
        if self.mine_negatives is not None and self.shape != "pairs":
            raise ValueError(
                f"data.mine_negatives needs pairs data (anchor, positive); this data is {self.shape!r}. "
                "Remove data.mine_negatives or set data.shape: pairs."
            )
        return self

    def column(self, name: str) -> str | list[str]:
        """The file's column(s) for one of skillops' names."""
        return self.columns.get(name, name)

    @property
    def training_shape(self) -> str:
        """The shape the trainer sees: mined pairs become triplets."""
        return "triplets" if self.mine_negatives is not None else self.shape


# Which data shapes each loss can train on.
LOSS_SHAPES: dict[str, tuple[str, ...]] = {
    "mnrl": ("pairs", "triplets"),
    "cached_mnrl": ("pairs", "triplets"),
    "cosine_similarity": ("scored_pairs",),
}


class LossConfig(_Strict):
    name: Literal["mnrl", "cached_mnrl", "cosine_similarity"] = Field(
        "mnrl",
        description="mnrl: MultipleNegativesRankingLoss; cached_mnrl: its cached (GradCache) "
        "variant for large batches; cosine_similarity: CosineSimilarityLoss on scored pairs.",
    )
    scale: float = Field(20.0, gt=0, description="(Cached)MNRL similarity scale (cards 000, 001: 20).")
    mini_batch_size: int = Field(32, ge=1, description="cached_mnrl: texts encoded at once (memory bound).")
    gather_across_devices: bool = Field(
        False,
        description="(Cached)MNRL with training.processes > 1: every process's batch is a negative of every "
        "query (card 001); else each process's own batch only.",
    )

    @property
    def in_batch_negatives(self) -> bool:
        """Whether the other pairs of a batch are each query's negatives (what the batches must respect)."""
        return self.name in ("mnrl", "cached_mnrl")


class Prompts(_Strict):
    """Text put before queries and documents, e5-style ("query: ", "passage: ")."""

    query: str = ""
    document: str = ""

    def __bool__(self) -> bool:
        return bool(self.query or self.document)


class TunedParams(_Strict):
    """What the hyperparameter search chooses for a training: produced by `SearchConfig.suggest`,
    applied by `TrainingConfig.tuned`, recorded on the run as `best.<name>`."""

    learning_rate: float = Field(gt=0, lt=1)
    batch_size: int = Field(ge=2)
    warmup_ratio: float = Field(ge=0, lt=1)

    def within(self, search: SearchConfig) -> bool:
        """Whether the search could have suggested these parameters itself."""
        return (
            search.learning_rate[0] <= self.learning_rate <= search.learning_rate[1]
            and self.batch_size in search.batch_sizes
            and search.warmup_ratio[0] <= self.warmup_ratio <= search.warmup_ratio[1]
        )


class TrainingConfig(_Strict):
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=2, description="In-batch negatives need at least 2.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    processes: int = Field(
        1,
        ge=1,
        description="Train in this many processes with the trainer's DDP (torchrun): one per GPU (NCCL), or "
        "gloo on CPU. The batch size is per process.",
    )
    init_from: Literal["base", "champion"] = Field(
        "base",
        description="Start tuning trials and training from the base model, or from the current champion (continued "
        "training on the current data; the base model when there is no champion yet).",
    )
    weight_decay: float = Field(0.0, ge=0)
    max_seq_length: int = Field(128, ge=8)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="auto: bf16 where the GPU has it, fp16 with loss scaling on older GPUs, fp32 on CPU. bf16 or "
        "fp16 on a machine without them is refused before training.",
    )
    taxonomy_aware_batches: bool = Field(
        True,
        description="For in-batch-negative losses (MNRL, CachedMNRL): no batch holds a document that is a known "
        "positive of another row's anchor (an ESCO skill of that occupation, another relevant document of that "
        "query), across all processes' batches of a step. false: sentence-transformers' NO_DUPLICATES only.",
    )
    group_by_length: bool = Field(
        True,
        description="For losses that score each pair alone (cosine similarity): batches of pairs of about the "
        "same length, in random order, so less padding is computed (bench/length_grouping.py). In-batch-negative "
        "losses ignore it: grouping would pick each query's negatives by length.",
    )
    seed: int = 42
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    evals_during_training: int = Field(
        0, ge=0, description="Score the validation split this many times while training (logged as curves)."
    )
    checkpoint_every_steps: int = Field(
        0,
        ge=0,
        description="Save a checkpoint this often (0: each epoch); a killed run resumes from the last one.",
    )
    rounds: int = Field(
        1,
        ge=1,
        description="Continued training: each round trains `epochs` more, starting from the "
        "previous round's model, and is scored on the validation split (card 000: 9 rounds).",
    )

    def tuned(self, params: TunedParams | None) -> TrainingConfig:
        """These settings with the search's choices in place (as they are when the search is off)."""
        return self if params is None else self.model_copy(update=params.model_dump())


class SearchConfig(_Strict):
    n_trials: int = Field(3, ge=0, description="0 skips tuning and trains with `training` as is.")
    learning_rate: tuple[float, float] = (1e-5, 1e-4)
    batch_sizes: list[int] = [16, 32]
    warmup_ratio: tuple[float, float] = (0.0, 0.2)
    epochs: float = Field(1.0, gt=0, description="Epochs per trial (short: trials only rank params).")
    evals_per_trial: int = Field(3, ge=1, description="Validation points per trial; the pruner looks at each.")
    pruner: Literal["noise_aware_median", "median", "successive_halving", "hyperband", "none"] = Field(
        "noise_aware_median",
        description="How hopeless trials are stopped at the validation points: `noise_aware_median` stops "
        "a trial only when it trails the median of earlier trials at the same point by more than its "
        "standard error over the validation queries; the others are Optuna's own pruners "
        "(bench/pruners.py compares them).",
    )
    seed: int = 42
    parallel: int = Field(
        1, ge=1, description="Tuning workers on the one study: the pipeline's process and parallel - 1 more."
    )
    workers: Literal["local", "pool"] = Field(
        "local",
        description="Where the parallel - 1 extra workers run: `local`, processes on this machine (one GPU "
        "each, or a share of the CPU cores); `pool`, flow runs of the tune-trials deployment that any "
        "worker of the Prefect pool may take (the study then needs a database server as its storage).",
    )
    storage: str | None = Field(
        None,
        description="Optuna storage URL of the study (sqlite:///..., postgresql://user@host/db); default: "
        "SKILLOPS_OPTUNA_STORAGE, else a sqlite file in the run's attempt folder.",
    )

    def suggest(self, trial) -> TunedParams:
        """One trial's parameters from an Optuna trial. A seeded sampler draws in the order of
        these calls: the same seed with another order gives other values."""
        return TunedParams(
            learning_rate=trial.suggest_float("learning_rate", *self.learning_rate, log=True),
            batch_size=trial.suggest_categorical("batch_size", self.batch_sizes),
            warmup_ratio=trial.suggest_float("warmup_ratio", *self.warmup_ratio),
        )

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> SearchConfig:
        for name in ("learning_rate", "warmup_ratio"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"search.{name} = [{low}, {high}]: give it as [low, high].")
        if any(size < 2 for size in self.batch_sizes) or not self.batch_sizes:
            raise ValueError(f"search.batch_sizes = {self.batch_sizes}: give one or more sizes of at least 2.")
        if self.storage and has_password(self.storage):
            # The recipe is logged with every run: a password in it would be in every run's artifacts.
            raise ValueError(
                f"search.storage = {safe_uri(self.storage)} carries a password; remove it from the URL and put it "
                "in PGPASSFILE or ~/.pgpass (PostgreSQL), or give the whole URL in SKILLOPS_OPTUNA_STORAGE."
            )
        return self


# Which evaluator scores which shape of data.
EVALUATOR_SHAPES: dict[str, tuple[str, ...]] = {
    "reranking": ("pairs", "triplets"),
    "information_retrieval": ("pairs", "triplets"),
    "embedding_similarity": ("scored_pairs",),
}
IR_CUTOFFS = {
    "accuracy": (1, 3, 5, 10),
    "precision": (1, 3, 5, 10),
    "recall": (1, 3, 5, 10, 100),
    "ndcg": (10,),
    "mrr": (10,),
    "map": (100,),
}
# Information retrieval over the whole ranking, no cut-off: MAP as WorkRB computes it (its
# headline for ESCO), and R-precision (precision at the query's number of relevant documents).
IR_WHOLE_RANKING = ("map", "r_precision")
# Card 000's number beside the whole ranking: MAP over each query's relevant documents and a frozen
# draw of `evaluation.short_list_negatives` others (what its RerankingEvaluator ranks).
SHORT_LIST = "cosine_short_list_map"


class GoldenSet(_Strict):
    """A frozen benchmark: scored for base, candidate and champion every run, never trained on."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="How reports and the gate name it.")
    path: str = Field(
        description="CSV, JSONL or Parquet in the recipe's data shape (pairs: one row per query and "
        "relevant document; scored pairs for similarity), looked up like data.path."
    )
    columns: dict[str, str | list[str]] | None = Field(
        None, description="skillops name -> column in this file (default: data.columns of a table recipe)."
    )

    @property
    def location(self) -> Path:
        return resolve_path(self.path)


class EvaluationConfig(_Strict):
    evaluator: Literal["reranking", "information_retrieval", "embedding_similarity"] = "reranking"
    at_k: int = Field(100, ge=1, description="Reranking: cut-off for MRR and NDCG (card 000: 100).")
    primary_metric: str = "map"
    short_list_negatives: int | None = Field(
        None,
        ge=1,
        description="Information retrieval: also rank each query's relevant documents among this many others "
        f"drawn from the corpus (frozen with the set) and report their MAP as {SHORT_LIST} (card 000's "
        "reranking setup: 100). The whole ranking stays the headline.",
    )
    batch_size: int = Field(64, ge=1)
    golden: list[GoldenSet] = Field(
        [], description="Frozen benchmarks every candidate must not regress on (promotion.golden_tolerance)."
    )

    def metric_names(self) -> tuple[str, ...]:
        """Every metric the evaluator reports, as skillops names them (sanitised for MLflow)."""
        if self.evaluator == "reranking":
            return ("map", f"mrr_at_{self.at_k}", f"ndcg_at_{self.at_k}")
        if self.evaluator == "embedding_similarity":
            return ("pearson_cosine", "spearman_cosine")
        return (
            *(f"cosine_{name}" for name in IR_WHOLE_RANKING),
            *(f"cosine_{kind}_at_{k}" for kind, cutoffs in IR_CUTOFFS.items() for k in cutoffs),
            *((SHORT_LIST,) if self.short_list_negatives else ()),
        )

    def headline_metrics(self) -> list[str]:
        """The metrics the gate holds to `promotion.secondary_tolerance` besides the primary one,
        and that summaries show first: the primary metric, then the cards' headline numbers."""
        headline = self.metric_names()
        if self.evaluator == "information_retrieval":
            headline = ("cosine_map", "cosine_mrr_at_10", "cosine_ndcg_at_10", "cosine_recall_at_10")
        return [self.primary_metric, *(name for name in headline if name != self.primary_metric)]

    def reported_metrics(self) -> list[str]:
        """What reports and the decision's table show: the headline, with card 000's short-list MAP
        right after the primary metric, then the other numbers the cards and the field report."""
        if self.evaluator != "information_retrieval":
            return self.headline_metrics()
        primary, *rest = self.headline_metrics()
        more = ("cosine_r_precision", "cosine_recall_at_100", "cosine_accuracy_at_1", "cosine_map_at_100")
        short = [SHORT_LIST] if self.short_list_negatives else []
        return [primary, *short, *rest, *(name for name in more if name not in (primary, *rest))]

    @model_validator(mode="after")
    def _golden_names_are_unique(self) -> EvaluationConfig:
        names = [golden.name for golden in self.golden]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"evaluation.golden names {repeated} more than once; give each set its own name.")
        return self

    @model_validator(mode="after")
    def _short_list_is_retrieval(self) -> EvaluationConfig:
        if self.short_list_negatives and self.evaluator != "information_retrieval":
            raise ValueError(
                f"evaluation.short_list_negatives is for the information_retrieval evaluator (the {self.evaluator} "
                "evaluator ranks no whole corpus); remove it, or set data.eval_negatives for reranking."
            )
        return self

    @model_validator(mode="after")
    def _primary_metric_is_reported(self) -> EvaluationConfig:
        if self.primary_metric not in self.metric_names():
            raise ValueError(
                f"evaluation.primary_metric = {self.primary_metric!r} is not reported by the "
                f"{self.evaluator} evaluator; choose one of {list(self.metric_names())}."
            )
        return self


Level = Literal["error", "warn", "off"]


class ValidationPolicy(_Strict):
    """What each data check does when it finds something: stop the run (error), report it (warn)
    or skip it (off). Schema rules of the suites (columns, empty text, ranges) are always errors."""

    duplicates: Level = Field("error", description="Rows equal after folding case, spacing and Unicode form.")
    anchor_equals_positive: Level = "error"
    positive_in_negatives: Level = "error"
    leakage: Level = Field("error", description="A validation/test query that training also sees.")
    too_long: Level = Field("warn", description="Texts longer than training.max_seq_length tokens (cut, not lost).")
    near_duplicates: Level = Field(
        "warn",
        description="A held-out or golden query whose base-model embedding is nearly that of a training "
        "query (gendered forms, 'ICT' vs 'information technology'): exact leakage checks miss them.",
    )
    near_duplicate_threshold: float = Field(
        0.9, gt=0, le=1, description="Cosine similarity (base model) from which two queries count as near duplicates."
    )


class PromotionPolicy(_Strict):
    """When a candidate replaces the champion (or, with no champion yet, is better than the base
    model). All comparisons are on the same frozen test set, query by query.

    The defaults aim at "never ship a worse model": a strict improvement of the primary metric
    that a one-sided paired permutation test finds significant at 5%, and no headline metric
    or slice that drops by more than its tolerance. Test sets here are small (14 to 200 queries),
    where a higher mean is often noise; requiring significance costs a run that would have
    helped a little, while promoting noise costs users a worse model and a rollback.
    """

    min_delta: float = Field(
        0.0,
        ge=0,
        description="How much the candidate's primary metric must exceed the reference's, in "
        "metric units. 0 still requires a strict improvement.",
    )
    min_relative_delta: float = Field(
        0.0,
        ge=0,
        description="The same as a share of the reference's score (0.02: at least 2% better). "
        "Both this and min_delta must hold.",
    )
    significance_level: float | None = Field(
        0.05,
        gt=0,
        lt=1,
        description="The one-sided p-value of the paired permutation test (candidate better than "
        "the reference) must be below this. null: not required.",
    )
    secondary_tolerance: float = Field(
        0.01,
        ge=0,
        description="No other headline metric may be lower than the reference's by more than this.",
    )
    slice_tolerance: float = Field(
        0.02,
        ge=0,
        description="No slice (data.columns.slice, e.g. language) may have a primary metric lower "
        "than the reference's by more than this.",
    )
    min_slice_queries: int = Field(
        10,
        ge=1,
        description="Slices with fewer test queries are reported but not held to slice_tolerance.",
    )
    golden_tolerance: float = Field(
        0.01,
        ge=0,
        description="On every golden set (evaluation.golden) the candidate's primary metric may be "
        "lower than the reference's by at most this; where the set has enough queries for the paired "
        "test, it must also not be significantly lower (significance_level).",
    )
    require_golden_improvement: list[str] = Field(
        [], description="Golden sets, by name, on which the candidate must be strictly better."
    )
    resamples: int = Field(10000, ge=100, description="Permutations and bootstrap resamples.")
    seed: int = 0


# The variants a candidate can be served as: fp32 (its PyTorch weights) or one of its ONNX files
# (`skillops.serving.variants.FILES`); the settings' serve-time override takes the same names.
OnnxVariant = Literal["onnx", "int8", "int8_blocks"]
ServedVariant = Literal["fp32", "onnx", "int8", "int8_blocks"]


class ServingConfig(_Strict):
    """What the champion is served as. Every candidate gets the listed ONNX variants, and the gate
    scores each on the test and golden sets like the fp32 model; the one served is judged."""

    variants: list[OnnxVariant] = Field(
        ["onnx", "int8", "int8_blocks"],
        description="Built for every candidate: onnx (the transformer exported to ONNX, graph optimised), int8 "
        "(the same, weights and activations int8 for CPUs: the fastest), int8_blocks (int8 with a scale per block "
        "of 128 inputs: slower than int8, nearer fp32 on a fine-tuned model). [] builds none.",
    )
    prefer: ServedVariant = Field(
        "int8",
        description="The variant to serve when it is within max_relative_drop of fp32; else the next one that is "
        "(int8, int8_blocks, then onnx), else fp32. fp32 serves the PyTorch weights.",
    )
    max_relative_drop: float = Field(
        0.005,
        ge=0,
        lt=1,
        description="A variant whose primary metric is lower than the fp32 candidate's by more than this share, on "
        "the test set or any golden set, is not served (0.005: 0.5%).",
    )

    @model_validator(mode="after")
    def _preferred_is_built(self) -> ServingConfig:
        if self.prefer != "fp32" and self.prefer not in self.variants:
            raise ValueError(
                f"serving.prefer = {self.prefer!r}, but serving.variants {self.variants} does not build it; add it "
                "to serving.variants or prefer fp32."
            )
        return self


class Recipe(_Strict):
    name: str
    description: str = ""
    base_model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="A local path, an installed model package or a Hugging Face model id.",
    )
    registered_model_name: str = "esco-occupation-skills"
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    prompts: Prompts = Prompts()
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig = SearchConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    validation: ValidationPolicy = ValidationPolicy()
    promotion: PromotionPolicy = PromotionPolicy()
    serving: ServingConfig = ServingConfig()

    @model_validator(mode="after")
    def _parts_fit_together(self) -> Recipe:
        shape = self.data.training_shape
        if shape not in LOSS_SHAPES[self.loss.name]:
            fitting = [loss for loss, shapes in LOSS_SHAPES.items() if shape in shapes]
            raise ValueError(
                f"loss.name = {self.loss.name!r} cannot train on {shape} data (it needs "
                f"{' or '.join(LOSS_SHAPES[self.loss.name])}); use one of {fitting} for this data."
            )
        if self.data.shape not in EVALUATOR_SHAPES[self.evaluation.evaluator]:
            fitting = [name for name, shapes in EVALUATOR_SHAPES.items() if self.data.shape in shapes]
            raise ValueError(
                f"evaluation.evaluator = {self.evaluation.evaluator!r} cannot score {self.data.shape} "
                f"data; use one of {fitting}."
            )
        unknown = sorted(set(self.promotion.require_golden_improvement) - {g.name for g in self.evaluation.golden})
        if unknown:
            raise ValueError(
                f"promotion.require_golden_improvement names {unknown}, which evaluation.golden does not "
                f"list (it has {[g.name for g in self.evaluation.golden]}); add the set or remove the name."
            )
        return self

    def golden_data(self, golden: GoldenSet) -> DataConfig:
        """How to read a golden file: a table in the recipe's data shape, with its own column
        mapping, or the recipe's (an ESCO recipe's golden sets are anchor/positive pairs)."""
        columns = (
            golden.columns if golden.columns is not None else self.data.columns if self.data.format == "table" else {}
        )
        try:
            return DataConfig(format="table", path=golden.path, shape=self.data.shape, columns=columns)
        except ValidationError as error:
            raise RecipeError(f"evaluation.golden {golden.name!r}: {error.errors()[0]['msg']}") from None

    def with_overrides(self, overrides: dict[str, Any]) -> Recipe:
        """A copy with dotted keys replaced, e.g. {"training.epochs": 2}; validated again."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise RecipeError(f"Override {dotted!r}: {key!r} is not a section of a recipe.")
                node = node[key]
            if leaf not in node:
                raise RecipeError(f"Override {dotted!r}: no field {leaf!r} there; known: {sorted(node)}.")
            node[leaf] = value
        return parse_recipe(data, source="overrides")


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """`["training.epochs=1", "search.n_trials=0"]` as {"training.epochs": 1, ...}: each value
    is read as YAML, so numbers, booleans, null and lists keep their type; the recipe validates them."""
    overrides = {}
    for assignment in assignments:
        field, separator, value = assignment.partition("=")
        if not separator or not field.strip():
            raise RecipeError(f"Override {assignment!r}: write it as FIELD=VALUE, e.g. training.epochs=1.")
        try:
            overrides[field.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise RecipeError(f"Override {assignment!r}: the value is not valid YAML: {error}") from None
    return overrides


def parse_recipe(data: dict[str, Any], source: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '(top level)'}: {issue['msg']}"
            for issue in error.errors()
        )
        raise RecipeError(f"Recipe {source} is not valid: {problems}") from None


RECIPE_SUFFIXES = (".yaml", ".yml", ".toml")


def builtin_recipes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BUILTIN_RECIPES_DIR.glob("*.yaml"))}


def _read_recipe_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise RecipeError(f"Recipe {path} is not valid TOML: {error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"Recipe {path} is not valid YAML: {error}") from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name, or a user's YAML or TOML file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        known = builtin_recipes()
        if str(name_or_path) not in known:
            raise RecipeError(
                f"No recipe {str(name_or_path)!r}: it is neither a file nor a built-in recipe "
                f"({', '.join(known)}). Run `skillops recipes` to list them."
            )
        path = known[str(name_or_path)]
    if path.suffix not in RECIPE_SUFFIXES:
        raise RecipeError(
            f"Recipe {path}: unknown file type {path.suffix!r}; write it as YAML (.yaml) or TOML (.toml)."
        )
    data = _read_recipe_file(path)
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe {path} must be a mapping of fields, got {type(data).__name__}.")
    return parse_recipe(data, source=str(path))
