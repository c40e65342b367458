"""Where a benchmark's data is, checked before any work: a local copy's layout, or the Hub repo's reachability.

`resolve_sources` looks at every source of a suite without reading any image: for a local path, that it exists,
which files and which builder `load_image_dataset` would read, that the split (and configuration) is there, and that
the image and label columns are present (parquet schemas, the first members of a webdataset tar, imagefolder class
folders); for a Hub repo, that the Hub can be reached at all (no `HF_HUB_OFFLINE`, a TCP connection within a few
seconds), then that the repo (at its pinned revision) exists and that gated repos are accessible with the token. Every
problem is collected and raised together as one `MissingBenchmarksError` that names each benchmark and how to
provide it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import tarfile
from collections.abc import Mapping, Sequence
from glob import glob
from urllib.parse import urlparse

from .loading import (
    _BUILDERS,
    LABEL_COLUMN_CANDIDATES,
    _builder_for,
    _has_yaml_configs,
    _local_data_files,
    _local_split,
    config_directory,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
HUB_TIMEOUT = 15.0


class MissingBenchmarksError(ValueError):
    """Raised before any work when sources of a suite cannot be read; `problems` maps source names to reasons."""

    def __init__(self, message: str, problems: Mapping[str, str]):
        super().__init__(message)
        self.problems = dict(problems)


@dataclasses.dataclass
class ResolvedSource:
    """What the check found out about one source.

    Args:
        where (`str`): `"local"` or `"hub"`.
        builder (`str`, *optional*): The packaged builder a local copy is read with (`parquet`, `webdataset`, ...).
        files (`list[str]`): The local files of the split.
        columns (`list[str]`, *optional*): The columns, when they could be read without loading the data.
        class_names (`list[str]`, *optional*): The label column's class names (a `ClassLabel`, imagefolder folders).
        num_rows (`int`, *optional*): Rows of the split, when known without reading it (parquet metadata, Hub info).
    """

    where: str
    builder: str | None = None
    files: list[str] = dataclasses.field(default_factory=list)
    columns: list[str] | None = None
    class_names: list[str] | None = None
    num_rows: int | None = None


# ---------------------------------------------------------------------------------------------------- local copies


def _front_matter(readme: str) -> dict:
    import yaml

    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    return yaml.safe_load(text.split("\n---", 1)[0].lstrip("-\n")) or {}


def _yaml_config_files(root: str, config_name: str | None, split: str | None) -> tuple[list[str], str | None]:
    """Files of `config_name`/`split` in a local folder whose README declares `configs:` (a downloaded Hub repo)."""
    configs = _front_matter(os.path.join(root, "README.md")).get("configs") or []
    names = [entry.get("config_name", "default") for entry in configs]
    if config_name is None:
        chosen = next((c for c in configs if c.get("default")), None) or (configs[0] if len(configs) == 1 else None)
        if chosen is None:
            raise ValueError(f"its README.md declares configs {names}: name one (the spec's config_name).")
    else:
        chosen = next((c for c in configs if c.get("config_name", "default") == config_name), None)
        if chosen is None:
            raise ValueError(f"config {config_name!r} is not among the configs of its README.md: {names}.")
    data_files = chosen.get("data_files")
    by_split: dict[str, list[str]] = {}
    if isinstance(data_files, str):
        by_split["train"] = [data_files]
    elif isinstance(data_files, list):
        for entry in data_files:
            if isinstance(entry, str):
                by_split.setdefault("train", []).append(entry)
            else:
                paths = entry.get("path")
                by_split.setdefault(entry.get("split", "train"), []).extend(
                    [paths] if isinstance(paths, str) else paths
                )
    split = split if split in by_split else _local_split(split, list(by_split), root)
    files = sorted({f for pattern in by_split.get(split, []) for f in glob(os.path.join(root, pattern))})
    if not files:
        raise ValueError(f"no files match the data_files of config {config_name!r}, split {split!r}.")
    return files, split


def _parquet_info(path: str) -> tuple[list[str], dict, int]:
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    schema = meta.schema.to_arrow_schema()
    features = {}
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw:
        try:
            features = json.loads(raw).get("info", {}).get("features", {}) or {}
        except ValueError:
            features = {}
    return list(schema.names), features, meta.num_rows


def _tar_columns(path: str, members: int = 64) -> list[str]:
    """The webdataset columns of a tar: the extensions (after the first dot of the file name) of its first members."""
    columns = set()
    with tarfile.open(path) as tar:
        for count, member in enumerate(tar):
            if count >= members:
                break
            name = os.path.basename(member.name)
            if member.isfile() and "." in name and not name.startswith("."):
                columns.add(name.split(".", 1)[1].lower())
    return sorted(columns) + ["__key__", "__url__"]


def _class_names_from_features(features: dict, label_column: str | None) -> list[str] | None:
    candidates = [label_column] if label_column else list(LABEL_COLUMN_CANDIDATES)
    for column in candidates:
        feature = features.get(column) if column else None
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names"):
            return list(feature["names"])
    return None


def probe_local(spec) -> ResolvedSource:
    """Checks a local copy of `spec` (a `BenchmarkSpec` with `path`) as `load_image_dataset` would read it.

    Raises:
        `ValueError`: naming what is wrong (missing path, configuration or split; no readable files; no image or
        label column).
    """
    path = str(spec.path)
    split = spec.split
    if os.path.isdir(path) and _has_yaml_configs(path):
        files, split = _yaml_config_files(path, spec.config_name, split)
        builder = _builder_for(files)
    elif os.path.isdir(path):
        directory, split = config_directory(path, spec.config_name, split)
        every = [f for f in glob(os.path.join(directory, "**", "*"), recursive=True) if os.path.isfile(f)]
        builder = _builder_for(every)
        if builder is None:
            raise ValueError(f"no parquet, arrow, tar or image files under {directory}.")
        found = _local_data_files(directory, builder)
        if not found:
            raise ValueError(f"no {builder} files that datasets would read as a split under {directory}.")
        split = _local_split(split, list(found), path) if split is not None else next(iter(found))
        files = sorted(found[split]) if split is not None else sorted(f for fs in found.values() for f in fs)
    else:
        files = sorted(glob(path))
        if not files:
            raise ValueError("the path does not exist.")
        builder = _builder_for(files)
    if builder is None or not files:
        raise ValueError(f"cannot tell the format of {files[:3]}: expected parquet, arrow, tar or images.")

    resolved = ResolvedSource(where="local", builder=builder, files=files)
    features: dict = {}
    if builder == "parquet":
        resolved.columns, features, _ = _parquet_info(files[0])
        resolved.num_rows = sum(_parquet_info(f)[2] for f in files)
    elif builder == "webdataset":
        resolved.columns = _tar_columns(files[0])
    elif builder == "imagefolder":
        folders = sorted({os.path.basename(os.path.dirname(f)) for f in files})
        resolved.columns = ["image", "label"] if len(folders) > 1 else ["image"]
        resolved.class_names = folders if len(folders) > 1 else None
        resolved.num_rows = len([f for f in files if f.lower().endswith(dict(_BUILDERS)["imagefolder"])])
    if resolved.columns is not None:
        _check_columns(spec, resolved.columns)
        resolved.class_names = resolved.class_names or _class_names_from_features(features, spec.label_column)
    return resolved


def _check_columns(spec, columns: Sequence[str]) -> None:
    if not any(column in columns for column in spec.image_columns):
        raise ValueError(f"none of the image columns {list(spec.image_columns)} is there; columns: {list(columns)}.")
    wanted = [spec.label_column] if spec.label_column else list(LABEL_COLUMN_CANDIDATES)
    if not any(column in columns for column in wanted):
        raise ValueError(f"no label column ({' or '.join(wanted)}); columns: {list(columns)}.")


# ---------------------------------------------------------------------------------------------------- the Hub


def hub_offline() -> bool:
    """Whether Hub access is switched off (`HF_HUB_OFFLINE` or `HF_DATASETS_OFFLINE`)."""
    from huggingface_hub import constants

    def on(name: str) -> bool:
        return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")

    return bool(constants.HF_HUB_OFFLINE) or on("HF_HUB_OFFLINE") or on("HF_DATASETS_OFFLINE")


def hub_unreachable_reason(timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why the Hub cannot be reached, or `None` when it can be tried: offline mode, or no TCP connection to the
    endpoint within `timeout` seconds (skipped behind an HTTP proxy, where the request itself will tell)."""
    from huggingface_hub import constants

    if hub_offline():
        return "HF_HUB_OFFLINE=1 (or HF_DATASETS_OFFLINE=1) is set, so the Hub is not contacted"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return None
    except OSError as error:
        return f"no network connection to {constants.ENDPOINT} ({type(error).__name__}: {error or 'timed out'})"


def probe_hub(repo_id: str, revision: str | None = None, token: str | bool | None = None) -> ResolvedSource:
    """Checks that a Hub dataset repo exists at `revision` and, when gated, that `token` has access.

    Raises:
        `ValueError`: naming the problem (not found, gated without access, revision missing, HTTP error).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi()
    try:
        info = api.dataset_info(repo_id, revision=revision, token=token, timeout=HUB_TIMEOUT)
        if getattr(info, "gated", False):
            api.auth_check(repo_id, repo_type="dataset", token=token)
    except GatedRepoError as error:
        raise ValueError(
            f"{repo_id} is gated and this token has no access: accept its terms at "
            f"https://huggingface.co/datasets/{repo_id} and pass a token (HF_TOKEN or --token)."
        ) from error
    except RevisionNotFoundError as error:
        raise ValueError(f"revision {revision!r} of {repo_id} does not exist.") from error
    except RepositoryNotFoundError as error:
        raise ValueError(
            f"the Hub has no dataset {repo_id} (or it is private and this token has no access)."
        ) from error
    except (HfHubHTTPError, OSError) as error:
        raise ValueError(f"the Hub did not answer for {repo_id}: {type(error).__name__}: {error}") from error
    resolved = ResolvedSource(where="hub")
    card = getattr(info, "card_data", None)
    dataset_info = (card.to_dict() if card is not None else {}).get("dataset_info")
    for entry in dataset_info if isinstance(dataset_info, list) else [dataset_info] if dataset_info else []:
        features = {f.get("name"): f.get("dtype") for f in entry.get("features", []) if isinstance(f, dict)}
        for feature in entry.get("features", []):
            names = (
                (feature.get("dtype") or {}).get("class_label", {}).get("names") if isinstance(feature, dict) else None
            )
            if names and feature.get("name") in LABEL_COLUMN_CANDIDATES:
                resolved.class_names = [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else names
        resolved.columns = resolved.columns or [name for name in features if name]
    return resolved


# ---------------------------------------------------------------------------------------------------- all together


LOCAL_PATHS_HELP = (
    "Local copies are passed as NAME=PATH: `--robustness_paths NAME=PATH ...` (main job), `--path NAME=PATH` "
    "(hf-nullspace evaluate), `paths={NAME: PATH}` (evaluate_robustness); the layouts are in docs/benchmarks.md."
)


def provide_hint(source: str, spec) -> str:
    """How to provide `source` locally: `NAME=PATH` for a registry benchmark (`imagenet-c=PATH` for all 75
    ImageNet-C sources), the clean-data argument for the suite's own data."""
    from .registry import BENCHMARKS

    if source == "data":
        if spec.name in BENCHMARKS:
            return f"pass a local copy as {spec.name}=PATH"
        return "pass readable clean data (`--data`, or the run's --dataset_name/--eval_split)"
    return f"pass a local copy as {_group(source)}=PATH"


def _group(source: str) -> str:
    return source.split("/", 1)[0] if source.startswith("imagenet-c/") else source


def resolve_sources(
    specs: Mapping[str, object], token: str | bool | None = None, suite_name: str | None = None
) -> dict[str, ResolvedSource]:
    """Checks every source of a suite before any work, and raises one error naming all that cannot be read.

    Args:
        specs (`Mapping[str, BenchmarkSpec]`): Source name -> spec (`Suite.sources()`).
        token (`str` or `bool`, *optional*): Hub token, for gated repos.
        suite_name (`str`, *optional*): Named in the error message.

    Returns:
        `dict[str, ResolvedSource]`: what was found per source.

    Raises:
        `MissingBenchmarksError`: listing each benchmark that is missing, why, and how to provide it.
    """
    resolved: dict[str, ResolvedSource] = {}
    problems: dict[str, str] = {}
    hub: dict[tuple[str, str | None], list[str]] = {}
    local_cache: dict[tuple, ResolvedSource | str] = {}
    for source, spec in specs.items():
        display = spec.display_name or spec.name
        if spec.path is not None:
            key = (spec.path, spec.config_name, spec.split, spec.image_columns, spec.label_column)
            if key not in local_cache:
                try:
                    local_cache[key] = probe_local(spec)
                except ValueError as error:
                    local_cache[key] = str(error)
            found = local_cache[key]
            if not isinstance(found, str) and found.class_names:
                from .registry import _class_label_fn

                try:
                    _class_label_fn(found.class_names, spec)
                except ValueError as error:
                    found = str(error)
            if isinstance(found, str):
                problems[source] = f"{display}: the local copy at {spec.path} cannot be read: {found}"
            else:
                resolved[source] = found
        elif spec.local_only or spec.repo_id is None:
            problems[source] = (
                f"{display}: not on the Hub, and no local path was given. Get it: "
                f"{spec.source_hint or 'see docs/benchmarks.md'}; then {provide_hint(source, spec)}."
            )
        else:
            hub.setdefault((spec.repo_id, spec.revision), []).append(source)
    if hub:
        unreachable = hub_unreachable_reason()
        for (repo_id, revision), sources in hub.items():
            try:
                if unreachable:
                    raise ValueError(f"{unreachable}.")
                found = probe_hub(repo_id, revision, token)
            except ValueError as error:
                for source in sources:
                    at = f"{repo_id}@{revision[:12]}" if revision else repo_id
                    problems[source] = (
                        f"{specs[source].display_name or source}: Hub dataset {at} cannot be read: {error} "
                        f"Make the Hub reachable, or {provide_hint(source, specs[source])}."
                    )
                continue
            for source in sources:
                resolved[source] = found
    if problems:
        raise MissingBenchmarksError(_message(problems, suite_name, len(specs)), problems)
    return resolved


def _message(problems: Mapping[str, str], suite_name: str | None, total: int) -> str:
    # ImageNet-C's 75 sources usually fail together: one line per group with the same reason
    lines, grouped = [], {}
    for source, reason in problems.items():
        group = _group(source)
        if group != source:
            general = reason.split(": ", 1)[1] if ": " in reason else reason
            grouped.setdefault((group, general), []).append(source)
        else:
            lines.append(f"  - {source}: {reason}")
    for (group, reason), sources in grouped.items():
        names = sources[0] if len(sources) == 1 else f"{len(sources)} sources ({sources[0]} ... {sources[-1]})"
        lines.append(f"  - {group}, {names}: {reason}")
    suite = f"suite {suite_name!r}" if suite_name else "suite"
    return (
        f"The robustness {suite} cannot run: {len(problems)} of its {total} sources cannot be read (checked "
        "before any training or evaluation):\n" + "\n".join(lines) + "\n" + LOCAL_PATHS_HELP
    )
