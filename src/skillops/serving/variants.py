"""The champion as it is served: fp32 PyTorch, or an ONNX export of its transformer run by
onnxruntime, optimised or quantised to int8 (two ways), built for every candidate and judged by
the gate.

sentence-transformers 6 exports through `optimum-onnx`, whose releases need transformers < 4.58
(and `optimum-intel` < 5.6): neither installs beside transformers 5. So skillops exports the
transformer itself (`torch.onnx.export`), lets onnxruntime optimise the graph, and quantises it
with onnxruntime's dynamic int8 quantisation, which is what those exporters do under the hood;
`int8_blocks` quantises the weights in blocks instead, slower than `int8` but nearer fp32 where a
fine-tuned model's activations have outliers (bench/quantization.py).
At serve time the ONNX session replaces only the transformer's forward pass inside the
SentenceTransformer: tokenisation, prompts, pooling and normalisation stay the library's own, so
every variant encodes exactly the texts the fp32 model would.

In the model folder: `onnx/model.onnx` (optimised), `onnx/model_int8.onnx` and
`onnx/model_int8_blocks.onnx`.
"""

from __future__ import annotations

import json
import logging
import os
import types
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # a GPU machine running bench/gpu.py: no MLflow there, and nothing logs a pyfunc
    PythonModel = object

logger = logging.getLogger(__name__)

FILES: dict[str, str] = {
    "onnx": "onnx/model.onnx",
    "int8": "onnx/model_int8.onnx",
    "int8_blocks": "onnx/model_int8_blocks.onnx",
}
VARIANT_SETTING = "SKILLOPS_SERVING_VARIANT"  # at serve time: fp32 serves the PyTorch weights instead


def export(model, model_dir: Path, variants: list[str]) -> dict[str, Path]:
    """Write the ONNX files of `variants` (onnx, int8, int8_blocks) into the saved model's folder; returns
    variant -> file. `model` is the loaded SentenceTransformer saved at `model_dir`."""
    from onnxruntime import GraphOptimizationLevel, InferenceSession, SessionOptions

    exported = export_graph(model, model_dir / "onnx")
    built = {}
    if "onnx" in variants:
        options = SessionOptions()
        options.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable across CPUs
        options.optimized_model_filepath = str(model_dir / FILES["onnx"])
        InferenceSession(str(exported), options, providers=["CPUExecutionProvider"])
        built["onnx"] = model_dir / FILES["onnx"]
    if "int8" in variants:
        built["int8"] = quantize(exported, model_dir / FILES["int8"])
    if "int8_blocks" in variants:
        built["int8_blocks"] = quantize_blocks(exported, model_dir / FILES["int8_blocks"])
    exported.unlink()
    return built


def export_graph(model, folder: Path) -> Path:
    """The transformer of `model` as an ONNX graph (`folder/exported.onnx`), token ids in, token
    embeddings out, batch and sequence dynamic; the variants are built from it."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    transformer = model[0].auto_model.to("cpu").eval()
    features = model[0].preprocess(["an occupation", "a skill of the occupation, longer"])
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in features]

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer  # a submodule: its weights are the graph's, not constants

        def forward(self, *inputs):
            return self.transformer(**dict(zip(names, inputs, strict=True)), return_dict=True).last_hidden_state

    exported = folder / "exported.onnx"
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "token_embeddings"]}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (below) and says it is deprecated; its
        # tracer warns about shape checks it freezes, which the variants' scores on the gate's
        # sets would show if they mattered. Nothing here to act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            TokenEmbeddings().eval(),
            tuple(features[name] for name in names),
            str(exported),
            input_names=names,
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript, and loses dynamic axes here
        )
    return exported


def quantize(exported: Path, target: Path, keep_fp32: list[str] = ()) -> Path:
    """The int8 variant of an exported graph: weights int8 per output channel, activations
    quantised on the fly (no calibration data); the MatMul nodes named in `keep_fp32` stay fp32
    (bench/quantization.py weighs that trade)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = exported.with_name("prepared.onnx")
    quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(
        str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=list(keep_fp32)
    )
    prepared.unlink()
    return target


def quantize_blocks(exported: Path, target: Path, block_size: int = 128) -> Path:
    """The int8_blocks variant: each MatMul's weights int8 in blocks of `block_size` inputs, each
    block with its own scale, and at run time each token's activations quantised per block too
    (onnxruntime's MatMulNBits, accuracy level 4: int8 arithmetic). `int8` gives a whole
    activation tensor one range, which the outliers of a fine-tuned model stretch: on the main
    job's candidate it lost 2.17% of test MAP where this lost none, running at 0.64 of int8's
    speed (bench/quantization.py, 2026-12-06; docs/serving.md)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # Importing the quantizer calls logging.basicConfig(level=INFO): every library's INFO lines
    # would print. The root logger is put back as it was, and the quantizer's own node-by-node
    # lines kept to warnings.
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(str(exported), bits=8, block_size=block_size, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return target


# What a sentence-transformers model folder holds that loads as data: weights, configs, tokenizer
# files, ONNX graphs (onnxruntime runs only its own operators) and the model card.
_DATA_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".onnx", ".md", ".png"}


def check_model_files(model_dir: Path) -> None:
    """Refuse a model folder that could run code when loaded: a file that is not data
    (`_DATA_SUFFIXES`: no Python, no pickle), a module outside sentence-transformers' own in
    `modules.json`, or a config that asks for the model's own code (`auto_map`). The promotion
    authority checks every candidate with this before it loads or serves it."""
    from skillops.errors import PromotionError

    problems = []
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.suffix not in _DATA_SUFFIXES:
            problems.append(f"{path.relative_to(model_dir)} is not a data file")
    modules = model_dir / "modules.json"
    if not modules.is_file():
        problems.append("modules.json is missing")
    else:
        for module in json.loads(modules.read_text("utf-8")):
            if not str(module.get("type", "")).startswith("sentence_transformers."):
                problems.append(f"modules.json names the module {module.get('type')!r}")
    for config in model_dir.rglob("config*.json"):
        if "auto_map" in json.loads(config.read_text("utf-8")):
            problems.append(f"{config.relative_to(model_dir)} asks for the model's own code (auto_map)")
    if problems:
        raise PromotionError(
            f"{model_dir}: refused, it could run code when loaded: {'; '.join(problems)}. A candidate holds a "
            "sentence-transformers folder of weights, configs and ONNX graphs only."
        )


def load(model_dir: str | Path, variant: str = "fp32", threads: int | None = None):
    """The SentenceTransformer at `model_dir`, encoding with `variant`'s ONNX file when it is not
    fp32 (its transformer's forward pass runs in onnxruntime; the rest is the library's own)."""
    from skillops.training.modeling import load_model

    model = load_model(str(model_dir))
    if variant == "fp32":
        return model
    path = Path(model_dir) / FILES[variant]
    if not path.is_file():
        from skillops.errors import ModelNotFoundError

        raise ModelNotFoundError(f"{path}: this model has no {variant} variant; serve fp32 ({VARIANT_SETTING}=fp32).")
    _run_in_onnxruntime(model[0], path, threads)
    _pool_on_one_torch_thread(model)
    return model


def session_options():
    """How a served variant's onnxruntime session runs: one thread a run, its operators one after
    another, every graph optimisation, no spinning (between runs the tokenizer and the pooling need
    the cores). The cores are used by running shards of a batch side by side (`_run_in_onnxruntime`):
    a text embedding's small matrices gave a second intra-op thread little to do (docs/serving.md)."""
    from onnxruntime import ExecutionMode, GraphOptimizationLevel, SessionOptions

    options = SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _run_in_onnxruntime(transformer, path: Path, threads: int | None) -> None:
    """The transformer's forward pass becomes onnxruntime's: a batch is cut into one shard per core
    (`threads`, default every core), and the shards run side by side in one session (its `run` is
    safe from several threads and lets go of the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch
    from onnxruntime import InferenceSession

    session = InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    output = getattr(transformer, "module_output_name", "token_embeddings")
    cores = threads or os.cpu_count() or 1
    shards = ThreadPoolExecutor(cores, thread_name_prefix="onnx-shard") if cores > 1 else None

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, feeds)[0]

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        feeds = {name: features[name].detach().cpu().numpy().astype(np.int64) for name in names}
        rows = len(feeds[names[0]])
        if shards is None or rows == 1:
            embeddings = run(feeds)
        else:
            cuts = np.array_split(np.arange(rows), min(cores, rows))
            parts = [{name: array[cut[0] : cut[-1] + 1] for name, array in feeds.items()} for cut in cuts]
            embeddings = np.concatenate(list(shards.map(run, parts)))
        features[output] = torch.from_numpy(embeddings)
        return features

    transformer.forward = types.MethodType(forward, transformer)


def _pool_on_one_torch_thread(model) -> None:
    """Around the graph, torch only pools and normalises small tensors; with its default of a
    thread per core, its threads spin after each op and take the cores from the graph's shards
    (int8 at batch 32 on 2 cores: 1,543 texts/s with torch's 2 threads, 2,115 with one; bench/serving.py).
    So an ONNX variant's `encode` runs torch on one thread and gives the setting back after."""
    import torch

    encode = model.encode

    def encode_with_one_torch_thread(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return encode(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    model.encode = encode_with_one_torch_thread


def requested_variant(logged: str) -> str:
    """What to serve: SKILLOPS_SERVING_VARIANT when set (fp32 serves the PyTorch weights), else
    the variant the gate chose and logged with the version."""
    from skillops.settings import settings

    return settings().serving_variant or logged


def encode_request(model, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
    """A serving request's texts (the one string column of the logged signature) as float32
    embeddings, with the prompt it names (`params.prompt_name`, e.g. "query")."""
    import numpy as np

    texts = model_input.iloc[:, 0].tolist()
    prompt_name = (params or {}).get("prompt_name")
    return np.asarray(model.encode(texts, prompt_name=prompt_name, show_progress_bar=False), dtype=np.float32)


class EmbeddingModel(PythonModel):
    """The pyfunc of versions registered before `skillops.serving.mlflow_model`'s layout (a pickle of this
    class under artifacts/model): kept so that they still serve."""

    def load_context(self, context) -> None:
        variant = requested_variant(context.model_config.get("variant", "fp32"))
        self.model = load(context.artifacts["model"], variant)
        logger.info("Serving the %s variant of %s", variant, context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        return encode_request(self.model, model_input, params)
