"""The skillops CLI: instant help, readable validation, exit codes people can script on."""

import subprocess
import sys

import pandas as pd

from helpers import REPO, edit_csv, tiny_recipe_yaml
from skillops.cli import main


def test_help_imports_neither_torch_nor_pandas():
    code = (
        "import sys; from skillops.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n"
        "print(sorted({'torch', 'pandas', 'mlflow', 'pydantic'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert "validate" in out.stdout
    assert out.stdout.strip().endswith("[]")


def test_recipes_lists_the_builtin(capsys):
    assert main(["recipes"]) == 0
    assert "esco-occupation-skills" in capsys.readouterr().out


def test_validate_exit_codes(esco_copy, tmp_path, capsys):
    recipe = tiny_recipe_yaml(tmp_path / "r.yaml", esco_copy, tmp_path)
    assert main(["validate", str(recipe)]) == 0
    assert "passed" in capsys.readouterr().out

    edit_csv(esco_copy / "occupationSkillRelations_en.csv", lambda f: pd.concat([f, f.head(1)]))
    assert main(["validate", str(recipe)]) == 1
    assert "each (occupation, skill) relation appears once" in capsys.readouterr().out

    assert main(["validate", "no-such-recipe"]) == 2
    assert "Run `skillops recipes`" in capsys.readouterr().err


def test_validate_a_bare_data_file_with_html_report(tmp_path, capsys):
    from bad_inputs import good_pairs

    good = tmp_path / "pairs.csv"
    good_pairs().rename(columns={"anchor": "title", "positive": "skill"}).to_csv(good, index=False)
    assert main(["validate", str(good), "--columns", "anchor=title,positive=skill"]) == 0
    assert "rule(s) failed" not in capsys.readouterr().out

    bad = tmp_path / "bad.csv"
    frame = good_pairs()
    frame.loc[4, "positive"] = frame.anchor[4]
    frame.to_csv(bad, index=False)
    report = tmp_path / "report.html"
    assert main(["validate", str(bad), "--html", str(report)]) == 1
    out = capsys.readouterr().out
    assert "bad.csv: column 'anchor, positive': rule 'anchor differs from positive'" in out and "lines [6]" in out
    page = report.read_text()
    assert (
        page.startswith("<!doctype html>") and "anchor differs from positive" in page and "nothing was trained" in page
    )
