"""What a robustness evaluation scores: `Evaluation` rows, `Suite`s of them, and the registered suites (`get_suite`).

A suite is a list of evaluations, each reading a source (the suite's clean data, or a benchmark of the registry),
optionally attacking or corrupting each batch in [0, 1] pixel space; `evaluate.py` runs them.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..data import (
    BENCHMARKS,
    IMAGENET_C_CORRUPTIONS,
    IMAGENET_C_SEVERITIES,
    BenchmarkSpec,
    get_benchmark,
    spec_from_source,
)
from ..data.bundled import BUNDLED_MNIST
from .budgets import format_budget

# The attack settings of the `imagenet` suite, stated in every report row, card row and model-index entry. No code
# of the paper's CW and PatchFool runs was published: these are the attacks' own defaults (see `attacks.cw_l2` and
# `attacks.patch_fool`).
CW_PARAMS = {"c": 1.0, "kappa": 0.0, "steps": 100, "lr": 0.01, "binary_search_steps": 1, "abort_early": True}
PATCHFOOL_PARAMS = {
    "num_patches": 1,
    "steps": 250,
    "lr": 0.05,
    "lr_step_size": 10,
    "lr_gamma": 0.95,
    "attention_weight": 0.002,
    "selection_layer": 4,
}
# A path under a group name stands for all its sources: `imagenet-c` for the 75 `imagenet-c/<corruption>/<severity>`.
PATH_GROUPS = ("imagenet-c",)

# corruptions whose definition fits small grey digits (weather textures and glass blur are photograph effects)
DIGIT_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "motion_blur",
    "zoom_blur",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)


@dataclass(frozen=True)
class Evaluation:
    """
    One row of a robustness report.

    Args:
        name (`str`): row name, e.g. `"clean"`, `"fgsm@1/255"` (budgets as `budgets.format_budget` writes them),
            `"corruption/fog/3"`, `"imagenet-a"`.
        source (`str`, *optional*, defaults to `"data"`): `"data"` (the suite's clean data) or a registry benchmark.
        group (`str`, *optional*, defaults to `"clean"`): `"clean"`, `"attack"`, `"corruption"` or `"shift"`.
        attack (`str`, *optional*): attack name of `robustness.attacks.ATTACKS`, with `params`.
        corruption (`str`, *optional*): corruption name, with `severity`, applied on the fly (or the ImageNet-C copy
            named by `source`).
    """

    name: str
    source: str = "data"
    group: str = "clean"
    attack: str | None = None
    params: tuple = ()
    corruption: str | None = None
    severity: int | None = None

    @property
    def kwargs(self) -> dict:
        return dict(self.params)


@dataclass
class Suite:
    """A named list of evaluations and the clean data (`data`) that evaluations with `source="data"` read."""

    name: str
    evaluations: list[Evaluation]
    data: BenchmarkSpec | None = None
    description: str = ""
    paths: dict = field(default_factory=dict)

    def path_for(self, source: str) -> str | None:
        """The local path given for `source`, or for its group (`imagenet-c` for `imagenet-c/fog/3`)."""
        if source in self.paths:
            return self.paths[source]
        group = source.split("/", 1)[0]
        return self.paths.get(group) if group in PATH_GROUPS else None

    def sources(self) -> dict[str, BenchmarkSpec]:
        """The data each source name stands for (checked before any work)."""
        specs = {}
        for evaluation in self.evaluations:
            if evaluation.source in specs:
                continue
            if evaluation.source == "data":
                if self.data is None:
                    raise ValueError(f"Suite {self.name!r} evaluates on clean data: pass `data` (a dataset).")
                specs["data"] = self.data
            else:
                specs[evaluation.source] = get_benchmark(evaluation.source, path=self.path_for(evaluation.source))
        return specs


def _attacks(budgets: Mapping[str, Sequence[float]], pgd_steps: int = 10) -> list[Evaluation]:
    rows = []
    for attack, epsilons in budgets.items():
        for epsilon in epsilons:
            params = {"epsilon": epsilon}
            if attack.startswith("pgd"):
                params.update(step_size=epsilon / 4, steps=pgd_steps)
            rows.append(
                Evaluation(
                    f"{attack}@{format_budget(epsilon)}", group="attack", attack=attack, params=tuple(params.items())
                )
            )
    return rows


def _corruptions(names: Sequence[str], severities: Sequence[int] = IMAGENET_C_SEVERITIES) -> list[Evaluation]:
    return [
        Evaluation(f"corruption/{c}/{s}", group="corruption", corruption=c, severity=s)
        for c in names
        for s in severities
    ]


def mnist_data(path: str = BUNDLED_MNIST) -> BenchmarkSpec:
    """The bundled real MNIST test split (1,000 digits) as a benchmark."""
    return spec_from_source(
        path, split="test", name="mnist", num_classes=10, display_name="MNIST (bundled 1,000-image test split)"
    )


def get_suite(
    name: str,
    data=None,
    paths: Mapping[str, str] | None = None,
    split: str | None = None,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
) -> Suite:
    """
    Builds a registered suite.

    Suites:
        - `mnist`: the embedded default's data: clean, FGSM (0.02, 0.05, 0.1), PGD-10 (0.02, 0.05), and 10
          corruptions that fit digits x 5 severities, on the fly.
        - `imagenet`: the paper's protocol: clean ImageNet val, FGSM (1/255), CW-L2, PatchFool on it; ImageNet-C
          (15 x 5 from the Hub), -A, -R, -V2, -Sketch; Stylized-ImageNet and DAmageNet when `paths` has them.
        - `attacks`: clean, FGSM and PGD at 1, 2, 4 and 8 /255 on `data`.
        - `corruptions`: clean and the 15 ImageNet-C corruptions x 5 severities applied on the fly to `data`.
        - `shift`: ImageNet-A, -R, -V2, -Sketch.

    Args:
        name (`str`): the suite.
        data (`str` or `BenchmarkSpec`, *optional*): the clean data (a local path or Hub id, read with
            `spec_from_source`, or a spec); the suite's own if any.
        paths (`Mapping[str, str]`, *optional*): local paths replacing registry sources, e.g.
            `{"imagenet-a": "/data/imagenet-a", "damagenet": "/data/damagenet"}`; `"imagenet-c"` gives the folder
            holding all corruptions (a downloaded copy of the Hub repo, or `<corruption>/` sub-folders).
        split (`str`, *optional*): split of `data` to read (`"test"` for a path or Hub id by default).
        corruptions (`Sequence[str]`, *optional*), severities (`Sequence[int]`, *optional*): a subset of the
            corruptions and severities (ImageNet-C sources, or applied on the fly) instead of the suite's own. The
            report then gives a partial mCE (named so), not the mCE.
    """
    paths = dict(paths or {})
    unknown = sorted(set(paths) - set(BENCHMARKS) - set(PATH_GROUPS))
    if unknown:
        valid = sorted({name for name in BENCHMARKS if not name.startswith("imagenet-c/")} | set(PATH_GROUPS))
        raise ValueError(f"Unknown benchmark name(s) {unknown} in the local paths; valid names: {valid}.")
    if data is not None and not isinstance(data, BenchmarkSpec):
        data = spec_from_source(data)
    if data is not None and split is not None:
        data = dataclasses.replace(data, split=split)
    unknown = sorted(set(corruptions or ()) - set(IMAGENET_C_CORRUPTIONS)) + sorted(
        set(severities or ()) - set(IMAGENET_C_SEVERITIES)
    )
    if unknown:
        raise ValueError(
            f"Unknown corruption(s) or severity(ies) {unknown}; corruptions: {', '.join(IMAGENET_C_CORRUPTIONS)}; "
            "severities 1-5."
        )
    picked = tuple(c for c in IMAGENET_C_CORRUPTIONS if corruptions is None or c in corruptions)
    levels = tuple(s for s in IMAGENET_C_SEVERITIES if severities is None or s in severities)
    if name == "mnist":
        evaluations = [Evaluation("clean")]
        evaluations += _attacks({"fgsm": (0.02, 0.05, 0.1), "pgd": (0.02, 0.05)})
        evaluations += _corruptions([c for c in DIGIT_CORRUPTIONS if c in picked], levels)
        return Suite(name, evaluations, data or mnist_data(), "bundled MNIST: attacks and corruptions", paths)
    if name == "attacks":
        budgets = tuple(k / 255 for k in (1, 2, 4, 8))
        return Suite(name, [Evaluation("clean"), *_attacks({"fgsm": budgets, "pgd": budgets})], data, "attacks", paths)
    if name == "corruptions":
        return Suite(name, [Evaluation("clean"), *_corruptions(picked, levels)], data, "corruptions", paths)
    shift = [
        Evaluation(b, source=b, group="shift") for b in ("imagenet-a", "imagenet-r", "imagenet-v2", "imagenet-sketch")
    ]
    if name == "shift":
        return Suite(name, shift, data, "distribution shift", paths)
    if name == "imagenet":
        evaluations = [
            Evaluation("clean"),
            *_attacks({"fgsm": (1 / 255,)}),
            Evaluation("cw", group="attack", attack="cw", params=tuple(CW_PARAMS.items())),
            Evaluation("patchfool", group="attack", attack="patchfool", params=tuple(PATCHFOOL_PARAMS.items())),
        ]
        evaluations += [
            Evaluation(
                f"imagenet-c/{c}/{s}", source=f"imagenet-c/{c}/{s}", group="corruption", corruption=c, severity=s
            )
            for c in picked
            for s in levels
        ]
        evaluations += shift
        evaluations += [
            Evaluation(b, source=b, group="shift") for b in ("stylized-imagenet", "damagenet") if b in paths
        ]
        return Suite(name, evaluations, data or get_benchmark("imagenet", path=paths.get("imagenet")), "paper", paths)
    raise ValueError(f"Unknown suite {name!r}. Valid suites: {', '.join(SUITES)}.")


SUITES = ("mnist", "imagenet", "attacks", "corruptions", "shift")


def parse_pairs(entries: list[str] | None, what: str, as_int: bool = False) -> dict:
    """Command-line `KEY=VALUE` entries (benchmark paths, sample caps): `["a=1", "b=all"]` -> `{"a": "1", "b": "all"}`
    (ints, `all` -> `None`, with `as_int`)."""
    pairs = {}
    for entry in entries or []:
        key, sep, value = entry.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} takes KEY=VALUE entries; got {entry!r}.")
        if as_int:
            if value.lower() in ("all", "none"):
                value = None
            elif value.isdigit() and int(value) > 0:
                value = int(value)
            else:
                raise ValueError(f"{what}: {entry!r} needs a positive number of images or `all`.")
        pairs[key] = value
    return pairs
