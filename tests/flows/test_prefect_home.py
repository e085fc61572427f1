"""The quick start stands alone on a machine where another project's newer Prefect migrated
~/.prefect/prefect.db: `make train` keeps its Prefect state in the checkout's .prefect/ and runs,
and a run pointed at such a database stops at once, naming the file and the fix."""

from __future__ import annotations

import os
import sqlite3
import subprocess

from helpers import BIN, REPO, tiny_recipe_yaml

# No Prefect release has this revision: it stands for what a newer Prefect leaves in a shared
# ~/.prefect/prefect.db (3.9.1 left 27d8f4e1a6c9, which 3.8 did not know).
FOREIGN_REVISION = "f0e1d2c3b4a5"


def _migrated_by_another_prefect(home):
    (home / ".prefect").mkdir(parents=True)
    with sqlite3.connect(home / ".prefect" / "prefect.db") as database:
        database.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        database.execute("INSERT INTO alembic_version VALUES (?)", (FOREIGN_REVISION,))
    return home / ".prefect"


def _env(home, **extra):
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME", "SKILLOPS_OPTUNA_STORAGE")
    }
    return {**env, "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env['PATH']}", **extra}


def test_a_database_this_prefect_cannot_read_is_named_with_the_fix(tmp_path):
    prefect_home = _migrated_by_another_prefect(tmp_path / "home")
    ran = subprocess.run(
        [str(BIN / "python"), str(REPO / "flows" / "train_esco.py")],
        env=_env(tmp_path / "home", PREFECT_HOME=str(prefect_home)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert f"{prefect_home / 'prefect.db'} is at revision '{FOREIGN_REVISION}'" in ran.stderr
    assert "PREFECT_HOME=$PWD/.prefect" in ran.stderr and "Traceback" not in ran.stderr


def test_make_train_runs_beside_a_database_another_prefect_migrated(small_esco, tiny_bert, tmp_path):
    home = tmp_path / "home"
    _migrated_by_another_prefect(home)
    recipe = tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert, search={"n_trials": 0})
    store = tmp_path / "mlruns" / "mlflow.db"
    ran = subprocess.run(
        ["make", "--no-print-directory", "train", f"RECIPE={recipe}", f"VENV={BIN.parent}"],
        cwd=REPO,
        env=_env(home, MLFLOW_TRACKING_URI=f"sqlite:///{store}", SKILLOPS_OUTPUTS_DIR=str(tmp_path / "outputs")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    output = ran.stdout + ran.stderr  # the summary is a print that Prefect logs
    assert "## tiny-esco candidate 1: " in output and "Stopping temporary server" in output
    assert (home / ".prefect" / "prefect.db").stat().st_size < 100_000  # untouched: not Prefect's own home
