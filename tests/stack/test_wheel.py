"""The package as a user installs it: a wheel built from the repo, in a fresh venv, used from a
folder outside the checkout. The suites, recipes and bundled samples must travel in the wheel."""

import os
import shutil
import subprocess
import sys
import sysconfig

from helpers import REPO


def test_a_wheel_validates_the_bundled_sample_outside_the_checkout(tmp_path):
    # Built from a copy: setuptools writes build/ and egg-info next to the sources it builds.
    source = tmp_path / "source"
    # Every folder pyproject.toml's package-dir names: the suites install from expectations/.
    for folder in ("src", "expectations"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("skillops-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The wheel's dependencies are the pinned ones this test runs on: the fresh venv sees them
    # through a path entry (not as a site dir, so the checkout's editable skillops stays out)
    # instead of installing torch and the rest a second time.
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (venv / site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # No PYTHONPATH: a checkout on it would shadow the installed package.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {"HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "false"}
    # Every subpackage ships: a reader's `skillops history` reads the promotion authority's record.
    imported = subprocess.run(
        [str(python), "-c", "import skillops, skillops.gate, skillops.stack.throttle; print(skillops.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr[-2000:]
    where = imported.stdout
    assert where.startswith(str(venv)), f"skillops imported from {where}, not from the installed wheel"

    result = subprocess.run(
        [str(venv / "bin" / "skillops"), "validate"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "occupations_en.csv" in result.stdout and "FAIL" not in result.stdout
    for recipe in ("course-skill-retrieval", "term-retrieval"):  # a JSONL and a Parquet sample
        assert (
            subprocess.run(
                [str(venv / "bin" / "skillops"), "validate", recipe], cwd=elsewhere, env=env, capture_output=True
            ).returncode
            == 0
        ), recipe
