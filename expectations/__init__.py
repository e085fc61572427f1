"""The data contracts: one Great Expectations suite (JSON) per input and eval-set shape, versioned
with the code. Installed as the package `skillops.expectations` (pyproject.toml maps it here), so
the wheel carries them; read with `importlib.resources`."""
