"""The card's "How to use" code runs as printed (`model_cards/model_card_template.md`, `card.py`): for a full finetune,
a LoRA run merged into its base and a LoRA adapter, each with a new head (other classes, and another number of them,
than the base model's), the code blocks of the rendered card are executed as they are in a fresh Python, against the
local Hub of `tests/hub_server.py` for a pushed run and inside the run folder for a local one, and print the new
classes. The base model's Hub id, not a local path, is what the card and `adapter_config.json` record.
"""

import ast
import json
import re

import pytest
from datasets import ClassLabel
from testing_utils import HUB_TOKEN, cli_args, make_tiny_vit, run_fresh, save_model, write_parquet

from hf_nullspace.card import _labels_literal, build_model_card
from hf_nullspace.lora import ADAPTER_CONFIG_FILE, LoraArguments, apply_lora

CLASSES = ["cat", "dog", "bird"]  # the base model has 10 classes `class_i`
KINDS = {
    "full": (),
    "merged": ("--use_lora", "true", "--lora_r", "4", "--merge_lora", "true"),
    "lora": ("--use_lora", "true", "--lora_r", "4"),
}


def usage_code(card: str) -> str:
    """The python code blocks of the card's "How to use" section, joined as one program."""
    section = card[card.index("\n## How to use") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, section
    return "\n".join(blocks)


def new_head_data(folder):
    return write_parquet(folder, num_classes=len(CLASSES), label_feature=ClassLabel(names=CLASSES))


def run_args(data, base, out, kind, *extra):
    """The main job's arguments for a short run of `kind` that trains a new head."""
    new_head = ("--ignore_mismatched_sizes", "true")
    return cli_args(data, base, out, *new_head, "--save_strategy", "no", *KINDS[kind], *extra)


def assert_prints_the_new_classes(stdout: str, kind: str) -> None:
    lines = stdout.strip().splitlines()
    assert lines[-1] in CLASSES, stdout
    if kind != "lora":  # the pipeline's top classes, then the argmax
        assert {entry["label"] for entry in ast.literal_eval(lines[0])} == set(CLASSES), stdout


@pytest.fixture(scope="module")
def hub_base(hub_server, tmp_path_factory):
    """A 10-class tiny ViT on the test Hub as `user/snippet-base`."""
    endpoint, _, _ = hub_server
    folder = tmp_path_factory.mktemp("base")
    local = save_model(folder / "model")
    run_fresh(
        f"""
        from huggingface_hub import HfApi

        api = HfApi(token={HUB_TOKEN!r})
        api.create_repo("user/snippet-base", exist_ok=True)
        api.upload_folder(repo_id="user/snippet-base", folder_path={local!r})
        """,
        endpoint,
        folder / "hf_home",
    )
    return "user/snippet-base"


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_pushed_card_code_runs_as_printed_and_prints_the_new_classes(kind, hub_server, hub_base, tmp_path):
    endpoint, _, _ = hub_server
    repo = f"user/snippet-{kind}"
    out = tmp_path / "out"
    args = run_args(
        new_head_data(tmp_path / "data"),
        hub_base,
        str(out),
        kind,
        *("--push_to_hub", "true", "--hub_model_id", repo, "--hub_token", HUB_TOKEN),
    )
    run_fresh(f"from hf_nullspace.finetune import main; main({args!r})", endpoint, tmp_path / "hf_home_train")
    pushed = run_fresh(
        f"from huggingface_hub import hf_hub_download; print(open(hf_hub_download({repo!r}, 'README.md')).read())",
        endpoint,
        tmp_path / "hf_home_card",
    ).stdout
    card = pushed[: pushed.rindex("\n")]  # print's newline
    assert card == (out / "README.md").read_text()
    assert "\nbase_model: user/snippet-base\n" in card
    code = usage_code(card)
    user = tmp_path / "user"  # a user's empty folder and cache: everything comes from the Hub
    user.mkdir()
    shown = run_fresh(code, endpoint, tmp_path / "hf_home_user", cwd=user)
    assert_prints_the_new_classes(shown.stdout, kind)
    if kind == "lora":
        assert json.loads((out / ADAPTER_CONFIG_FILE).read_text())["base_model_name_or_path"] == hub_base
        assert 'from_pretrained(\n    "user/snippet-base",\n' in code and "replace it" not in code


@pytest.mark.slow
def test_the_card_of_a_local_run_runs_as_printed_in_its_folder(tmp_path):
    from hf_nullspace.finetune import main

    out = tmp_path / "out"
    main(run_args(new_head_data(tmp_path / "data"), save_model(tmp_path / "model"), str(out), "full"))
    code = usage_code((out / "README.md").read_text())
    assert 'model="."' in code and 'Image.open("examples/' in code
    shown = run_fresh(code, "http://127.0.0.1:9", tmp_path / "hf_home", offline=True, cwd=out)
    assert_prints_the_new_classes(shown.stdout, "full")


def _new_head() -> dict:
    """`from_pretrained` arguments of a head for `CLASSES`."""
    return {
        "num_labels": len(CLASSES),
        "id2label": dict(enumerate(CLASSES)),
        "label2id": {name: i for i, name in enumerate(CLASSES)},
    }


def test_an_adapter_of_a_local_base_records_it_by_absolute_path_and_the_card_says_it_is_local(tmp_path, monkeypatch):
    folder = tmp_path / "work"
    save_model(folder / "base")
    monkeypatch.chdir(folder)
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained("base", **_new_head(), ignore_mismatched_sizes=True)
    args = LoraArguments(use_lora=True, lora_r=4)
    adapter = apply_lora(model, args, base_model_name="base")
    assert adapter.peft_config["default"].base_model_name_or_path == str(folder / "base")
    adapter = apply_lora(make_tiny_vit(**_new_head()), args, base_model_name="user/vit-base")
    assert adapter.peft_config["default"].base_model_name_or_path == "user/vit-base"

    from hf_nullspace.lora import lora_summary

    results = {"model_name": "adapter", "base_model": "./base", "lora": lora_summary(adapter)}
    card = str(build_model_card(results, repo_id="user/adapter"))
    assert "base_model:" not in card.split("---")[1]  # a local folder is no Hub id
    assert "`./base` (a local folder, not a Hub model)" in card
    code = usage_code(card)
    assert '    "./base",  # not a Hub model: replace it with your copy of the base model\n' in code
    assert 'labels = ["cat", "dog", "bird"]' in code and "ignore_mismatched_sizes=True" in code
    assert 'PeftModel.from_pretrained(base, "user/adapter")' in code
    assert 'hf_hub_download("user/adapter"' not in code and "Image.new(" in code  # no example image to download
    hub = str(build_model_card({**results, "base_model": "user/vit-base"}, repo_id="user/adapter"))
    assert "\nbase_model: user/vit-base\n" in hub and "replace it" not in usage_code(hub)


def test_many_or_odd_labels_are_printed_as_a_python_list_that_reads_back():
    odd = ['say "hi"', "back\\slash", "naïve", "tab\there"]
    assert ast.literal_eval(_labels_literal(odd).removeprefix("labels = ")) == odd
    many = [f"class number {i}" for i in range(200)]
    literal = _labels_literal(many)
    assert ast.literal_eval(literal.removeprefix("labels = ")) == many
    assert max(len(line) for line in literal.splitlines()) <= 116 and literal.count("\n") > 10
