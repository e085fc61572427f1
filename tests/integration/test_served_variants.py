"""The gate judges a candidate as it will be served: its ONNX variants are built into its folder and
scored on the test and golden sets like the fp32 weights; a variant that scores more than the
tolerance below fp32 is not served, and the report says why."""

import json
import shutil

import numpy as np
import torch

from helpers import tiny_recipe_yaml
from skillops import stages
from skillops.config import load_recipe
from skillops.serving import variants
from skillops.tracking import runs
from skillops.tracking.reports import served_lines
from skillops.training.modeling import load_model
from skillops.training.trainer import TrainingSpec, train_model


def test_every_variant_encodes_what_the_fp32_model_encodes(tiny_bert, tmp_path):
    folder = shutil.copytree(tiny_bert, tmp_path / "model")
    model = load_model(str(folder))
    model.prompts = {"query": "query: "}
    built = variants.export(model, folder, ["onnx", "int8", "int8_blocks"])
    assert sorted(built) == ["int8", "int8_blocks", "onnx"] and all(path.is_file() for path in built.values())
    texts = ["data analyst", "manage ICT security systems and networks", "x"]
    fp32 = model.encode(texts, prompt="query: ")
    torch_threads = torch.get_num_threads()
    onnx = variants.load(folder, "onnx", threads=3).encode(texts, prompt="query: ")  # a shard a text, side by side
    int8 = variants.load(folder, "int8").encode(texts, prompt="query: ")
    blocks = variants.load(folder, "int8_blocks").encode(texts, prompt="query: ")
    assert torch.get_num_threads() == torch_threads  # an ONNX variant pools on one torch thread, then gives it back
    unsharded = variants.load(folder, "onnx", threads=1).encode(texts, prompt="query: ")
    assert np.abs(onnx - unsharded).max() < 1e-6
    assert np.abs(onnx - fp32).max() < 1e-4  # the same network, run by onnxruntime
    assert 0 < np.abs(int8 - fp32).max() < 0.1  # int8 weights: near, not equal
    assert 0 < np.abs(blocks - fp32).max() < 0.1
    assert (folder / variants.FILES["int8"]).stat().st_size < (folder / variants.FILES["onnx"]).stat().st_size


def test_a_variant_below_the_tolerance_is_not_served_and_the_report_says_why(
    small_esco, tiny_bert, mlflow_store, tmp_path
):
    recipe = load_recipe(
        tiny_recipe_yaml(
            tmp_path / "recipe.yaml",
            small_esco,
            tiny_bert,
            search={"n_trials": 0},
            serving={"variants": ["int8", "int8_blocks"], "prefer": "int8", "max_relative_drop": 0.005},
        )
    )
    run = stages.start(recipe, stages.fingerprint(recipe))
    data = stages.prepare_data(run)
    spec = TrainingSpec(
        base_model=str(tiny_bert),
        train_path=data.paths.train,
        config=recipe.training.model_copy(update={"max_steps": 80, "learning_rate": 2e-3}),
        loss=recipe.loss,
        prompts=recipe.prompts,
        output_dir=tmp_path / "trained",
    )
    trained = train_model(spec).model_dir
    variants.export(load_model(str(trained)), trained, ["int8", "int8_blocks"])
    # Its int8 file is that of the untrained base model: a quantisation gone wrong, far below fp32.
    broken = shutil.copytree(tiny_bert, tmp_path / "untrained")
    variants.export(load_model(str(broken)), broken, ["int8"])
    shutil.copy(broken / variants.FILES["int8"], trained / variants.FILES["int8"])

    scores = stages.evaluate_models(run, data, trained)

    # int8 is preferred but too far below fp32; the next faster variant within the tolerance is served.
    assert scores.served_variant == "int8_blocks"
    int8, blocks = scores.variants
    assert int8.variant == "int8" and not int8.served and max(int8.drop.values()) > 0.005
    assert blocks.variant == "int8_blocks" and blocks.served and max(blocks.drop.values()) <= 0.005
    lines = served_lines(scores.served_variant, scores.variants)
    assert lines[0].startswith("Served as: int8_blocks (ONNX with int8 weights in blocks)")
    assert "not served, more than the tolerance below fp32" in lines[1] and lines[2].endswith("(served)")
    version = stages.register(run, data, trained, scores)
    tags = runs.client().get_model_version(f"{recipe.registered_model_name}-candidates", version).tags
    assert tags["skillops.served_variant"] == "int8_blocks"
    assert [c["variant"] for c in json.loads(tags["skillops.variant_checks"])] == ["int8", "int8_blocks"]
