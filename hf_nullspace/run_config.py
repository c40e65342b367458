"""The arguments of the main job as a base plus overrides, as trl's `--config` works.

The base is a config file (`run.py my.yaml ...` or `--config my.yaml ...`), or the embedded default run
(`assets/default_run.json`, the bundled ViT on the bundled MNIST) when neither the command line nor the file names a
model or a dataset. Every argument on the command line overrides the base. Once a model or a dataset is named, the
embedded default is not used at all, so a user's own model never trains on the bundled data (or the reverse) by
accident: both must then be named.
"""

import argparse
import json
import os

import yaml

from .data.bundled import ASSETS, BUNDLED_MNIST, BUNDLED_MODEL

DEFAULT_RUN = ASSETS / "default_run.json"
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# naming either of these leaves the embedded default out; both must then be given
SOURCE_ARGUMENTS = ("model_name_or_path", "dataset_name")


def embedded_default() -> dict:
    """The embedded default run's arguments, with the bundled model and data."""
    return {"model_name_or_path": BUNDLED_MODEL, "dataset_name": BUNDLED_MNIST, **json.loads(DEFAULT_RUN.read_text())}


HELP_DESCRIPTION = f"""\
Finetune an image classifier with approximate nullspace noise, score its robustness, write its card.

Defaults and overrides: a config file (.json or .yaml) given first or with --config FILE is the base, and every
argument on the command line overrides it. With neither --model_name_or_path nor --dataset_name (on the command line
or in the file), the embedded default run is the base under them: {
    ", ".join(f"{k}={v}" for k, v in json.loads(DEFAULT_RUN.read_text()).items())
}, on the bundled ViT and MNIST (so `--nullspace_mode random` alone is the default run in random mode). Naming a
model or a dataset leaves the embedded default out: name both, and the defaults below (transformers'
TrainingArguments and this project's) apply. The defaults shown are those of the run these arguments start.

Output folder: a folder holding an unfinished run with the same arguments (run_arguments.json) is resumed from its
newest complete checkpoint; a finished run or a run with other arguments is refused, naming what differs;
--overwrite_output_dir starts over."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each argument's default and keeps the description's paragraphs."""


def _given(parser: argparse.ArgumentParser, argv: list[str], dest: str) -> bool:
    options = [o for action in parser._actions if action.dest == dest for o in action.option_strings]
    return any(token == o or token.startswith(o + "=") for token in argv for o in options)


def split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """`(config file, the other arguments)`: the file is the first argument or follows `--config`."""
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        return argv[0], argv[1:]
    for i, token in enumerate(argv):
        if token == "--config":
            if i + 1 == len(argv):
                raise ValueError("--config needs a .json or .yaml file.")
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if token.startswith("--config="):
            return token.partition("=")[2], argv[:i] + argv[i + 1 :]
    return None, argv


def read_config(path: str) -> dict:
    """A .json or .yaml file of arguments as a dict."""
    if not path.endswith(CONFIG_SUFFIXES):
        raise ValueError(f"The config file {path} must end in {', '.join(CONFIG_SUFFIXES)}.")
    with open(os.path.abspath(path), encoding="utf-8") as f:
        config = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"The config file {path} must hold a mapping of argument names to values.")
    return config


def parse_with_base(parser, argv: list[str]) -> tuple:
    """
    Parses `argv` with `parser` (an `HfArgumentParser`) over its base: the config file in `argv`, on top of the
    embedded default when no model and no dataset are named (see the module docstring). Returns the dataclasses.

    Raises:
        `ValueError`: for names in the config file that no argument has, arguments the parser does not know, or a
        model without a dataset (or the reverse) once the embedded default is left out.
    """
    config_path, argv = split_config(argv)
    config = read_config(config_path) if config_path else {}
    named = [key for key in SOURCE_ARGUMENTS if key in config or _given(parser, argv, key)]
    base = config if named else {**embedded_default(), **config}
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{config_path} sets arguments that do not exist: {', '.join(unknown)}.")
    for action in parser._actions:
        if action.dest in base:
            action.required = False
    parser.set_defaults(**base)
    outputs = parser.parse_args_into_dataclasses(args=argv)
    missing = [f"--{key}" for key in SOURCE_ARGUMENTS if not any(getattr(o, key, None) for o in outputs)]
    if missing:
        raise ValueError(
            f"{' and '.join(f'--{key}' for key in named)} given but not {' and '.join(missing)}: name both "
            "(your model and your data). The bundled model and data are the base only when neither is named."
        )
    return outputs
