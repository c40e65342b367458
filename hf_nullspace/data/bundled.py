"""The assets shipped inside the package, so that the default run and the `mnist` suite work offline.

`ASSETS` is the package's `assets` folder; it holds `default_run.json` (the arguments of the embedded default run),
`mnist/` (`train.parquet` and `test.parquet`: 4,000 and 1,000 real MNIST digits) and `vit-tiny-mnist/` (a small
`ViTForImageClassification` trained on them, the default base model). `python trainer_scripts/train_base_model.py`
re-creates them.
"""

from importlib import resources

ASSETS = resources.files("hf_nullspace") / "assets"
BUNDLED_MNIST = str(ASSETS / "mnist")
BUNDLED_MODEL = str(ASSETS / "vit-tiny-mnist")
