"""The loader that versions logged before the package's subfolders (2026-12-06) name in their
MLmodel (`loader_module: skillops.mlflow_model`): they load and serve as they did."""

from skillops.serving.mlflow_model import _load_pyfunc

__all__ = ["_load_pyfunc"]
