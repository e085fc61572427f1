"""A registered version as MLflow stores it: the model folder once, read by two flavors.

- `sentence_transformers`: `mlflow.sentence_transformers.load_model("models:/<name>@champion")`
  returns the fp32 SentenceTransformer, the way MLflow users load one;
- `python_function`, loaded by this module by name (nothing is pickled): `mlflow models serve`
  and `mlflow.pyfunc.load_model` encode with the variant the gate chose (ONNX, int8 or fp32;
  `SKILLOPS_SERVING_VARIANT` overrides it), `prompt_name` a request parameter.

`registry.log_model` writes it with `mlflow.models.Model.log(flavor=this module)`, so MLflow
still makes the logged model, its environment files and its run link. Versions registered before
this layout hold a pickled `skillops.serving.variants.EmbeddingModel` under `artifacts/model`; they load
and serve as they did.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from skillops.errors import ModelNotFoundError
from skillops.serving.variants import encode_request, load, requested_variant

logger = logging.getLogger(__name__)

# Where mlflow.sentence_transformers.load_model looks for the model folder inside a logged model.
DATA = "model.sentence_transformer"


def save_model(path, mlflow_model, model_dir: Path, variant: str, signature, pip_requirements: list[str]) -> None:
    """MLflow's flavor hook (`Model.log` calls it with the folder to write): the model folder
    with its ONNX files, an MLmodel with both flavors, and the environment files."""
    import sentence_transformers
    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.pyfunc import add_to_model
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _process_pip_requirements,
        _PythonEnv,
    )

    path = Path(path)
    shutil.copytree(model_dir, path / DATA)
    mlflow_model.signature = signature
    add_to_model(
        mlflow_model,
        loader_module=__name__,
        data=DATA,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        model_config={"variant": variant},
    )
    mlflow_model.add_flavor("sentence_transformers", sentence_transformers_version=sentence_transformers.__version__)
    conda_env, requirements, _ = _process_pip_requirements(None, pip_requirements)
    (path / _CONDA_ENV_FILE_NAME).write_text(yaml.safe_dump(conda_env, default_flow_style=False), "utf-8")
    (path / _REQUIREMENTS_FILE_NAME).write_text("\n".join(requirements), "utf-8")
    _PythonEnv.current().to_yaml(str(path / _PYTHON_ENV_FILE_NAME))
    mlflow_model.save(str(path / MLMODEL_FILE_NAME))


class ServedEmbeddings:
    """What `mlflow.pyfunc.load_model` returns the predictions of: the chosen variant's encoder."""

    def __init__(self, model_dir: str, variant: str) -> None:
        self.model = load(model_dir, variant)
        logger.info("Serving the %s variant of %s", variant, model_dir)

    # A DataFrame: what MLflow hands over for the logged signature (one string column).
    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        return encode_request(self.model, model_input, params)


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ServedEmbeddings:
    """MLflow's pyfunc loader hook, named in the MLmodel."""
    return ServedEmbeddings(data_path, requested_variant((model_config or {}).get("variant", "fp32")))


def model_folder(local: Path) -> Path:
    """A downloaded version's model folder, in this layout or the one before it. Looked up at the
    two known places, never where the MLmodel says: the promotion authority reads workers' uploads."""
    for folder in (local / DATA, local / "artifacts" / "model"):
        if folder.is_dir():
            return folder
    raise ModelNotFoundError(f"{local}: no model folder ({DATA}/ or artifacts/model/); not a version skillops logged.")


def served_variant(local: Path) -> str:
    """The variant a downloaded version is served as (fp32 for versions logged before variants)."""
    described = yaml.safe_load((local / "MLmodel").read_text("utf-8"))
    return described["flavors"]["python_function"].get("config", {}).get("variant", "fp32")
