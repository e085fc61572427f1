"""The champion as it is served: its ONNX and int8 variants (`variants`) and the MLflow flavor
that loads a registered version (`mlflow_model`)."""


def __getattr__(name: str):
    # Versions registered before `mlflow_model`'s layout pickled `skillops.serving.EmbeddingModel`
    # by that name: unpickling them looks it up here.
    if name == "EmbeddingModel":
        from skillops.serving.variants import EmbeddingModel

        return EmbeddingModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
