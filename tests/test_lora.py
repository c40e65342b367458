"""LoRA finetuning through peft (`hf_nullspace/lora.py`): the wrapper, the noise hook and synthesis through it,
training, resume, merge, and the train -> card -> push -> load round trip against the local Hub server of
`tests/hub_server.py`.
"""

import copy
import json
import os

import pytest
import torch
from testing_utils import (
    FAMILIES,
    HUB_TOKEN,
    StopAt,
    TemplateDataset,
    cli_args,
    make_tiny_model,
    make_tiny_vit,
    make_trainer,
    run_fresh,
    save_model,
    template_images,
    write_parquet,
)

from hf_nullspace.classifier import unwrap
from hf_nullspace.config import NullspaceArguments
from hf_nullspace.embedding import find_patch_embedding, inject_noise, noise_shape
from hf_nullspace.lora import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    LoraArguments,
    apply_lora,
    is_peft_model,
    lora_savings,
    merge_lora,
    parameter_counts,
    resolve_target_modules,
)
from hf_nullspace.synthesis import synthesize_noise

peft = pytest.importorskip("peft")

LORA = LoraArguments(use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)


def lora_vit(adapter_seed=0):
    """The tiny ViT (always the same weights) with LoRA adapters initialised from `adapter_seed`."""
    torch.manual_seed(0)
    base = make_tiny_vit()
    torch.manual_seed(adapter_seed)
    return apply_lora(base, LORA)


def test_only_adapters_and_head_train_and_the_wrapper_starts_as_the_base_model():
    base = make_tiny_vit().eval()
    pixel_values, _ = template_images(4)
    with torch.no_grad():
        expected = base(pixel_values=pixel_values).logits
    model = apply_lora(copy.deepcopy(base), LORA).eval()
    assert is_peft_model(model) and not is_peft_model(base)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixel_values).logits, expected)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name or "classifier" in name for name in trainable), trainable
    assert not any("patch_embeddings" in name for name in trainable)
    # 2 layers x (q, v) x (A: r x 48 + B: 48 x r) + the head copy (48 x 10 + 10)
    assert parameter_counts(model)["trainable"] == 2 * 2 * 2 * 4 * 48 + 48 * 10 + 10
    assert resolve_target_modules(base, ["query", "value"]) == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="no linear layer"):
        resolve_target_modules(base, ["attention_qkv"])
    with pytest.raises(ValueError, match="merge_lora"):
        LoraArguments(merge_lora=True)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_noise_hook_and_synthesis_find_the_patch_embedding_through_the_peft_wrapper(model_type):
    base = make_tiny_model(model_type).eval()
    model = apply_lora(copy.deepcopy(base), LORA).eval()
    base_name, base_projection = find_patch_embedding(base)
    name, projection = find_patch_embedding(model)
    assert projection is unwrap(model).get_submodule(base_name) and name == base_name
    assert find_patch_embedding(model, module_name=base_name)[1] is projection  # the base model's names work too
    pixel_values, _ = template_images(4)
    shape = noise_shape(model, pixel_values)
    assert shape == (1, *FAMILIES[model_type][2])
    noise = torch.randn(shape)
    with torch.no_grad(), inject_noise(base, noise):
        expected = base(pixel_values=pixel_values).logits
    with torch.no_grad(), inject_noise(model, noise):
        noisy = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(noisy, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(pixel_values=pixel_values).logits, noisy)
    result = synthesize_noise(model, {"pixel_values": pixel_values}, NullspaceArguments(noise_max_updates=3))
    assert result.noise.shape == shape and torch.isfinite(result.noise).all()
    assert all(p.grad is None for p in model.parameters())


def lora_trainer(tmp_path, adapter_seed=0, **training):
    return make_trainer(
        tmp_path,
        NullspaceArguments(noise_max_updates=10, noise_refresh_steps=2),
        lora_vit(adapter_seed),
        train_dataset=TemplateDataset(64),
        **{"learning_rate": 1e-2, **training},
    )


def test_nullspace_training_moves_only_the_adapters_and_saves_a_loadable_adapter(tmp_path):
    trainer = lora_trainer(tmp_path)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert [r["step"] for r in trainer.noise_history] == [0, 2]
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".lora_" in name or "modules_to_save" in name for name in changed), changed
    trainer.save_model()
    files = set(os.listdir(tmp_path))
    assert {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE} <= files and "model.safetensors" not in files
    pixel_values, _ = template_images(4, seed=9)
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    torch.manual_seed(0)
    loaded = peft.PeftModel.from_pretrained(make_tiny_vit(), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, expected)
    results = trainer.build_results()
    assert results.lora["r"] == 4 and results.lora["merged"] is False
    assert results.lora["trainable"] == parameter_counts(trainer.model)["trainable"]


def test_resume_with_adapters_continues_exactly(tmp_path):
    args = dict(max_steps=6, save_strategy="steps", save_steps=3)
    full = lora_trainer(tmp_path / "full", **args)
    full.train()
    interrupted = lora_trainer(tmp_path / "cut", **args)
    interrupted.add_callback(StopAt(4))
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    checkpoint = tmp_path / "cut" / "checkpoint-3"
    assert (checkpoint / ADAPTER_WEIGHTS_FILE).is_file() and not (checkpoint / "model.safetensors").exists()
    resumed = lora_trainer(tmp_path / "cut", adapter_seed=1, **args)  # other adapter init: the checkpoint must win
    resumed.train(resume_from_checkpoint=True)
    assert [r["step"] for r in resumed.noise_history] == [0, 2, 4]
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_merge_gives_the_plain_model_with_the_same_outputs():
    model = lora_vit()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    pixel_values, _ = template_images(4)
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    merged = merge_lora(model)
    assert not is_peft_model(merged) and not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values=pixel_values).logits, expected, rtol=1e-5, atol=1e-5)


def test_job_with_merge_lora_saves_a_plain_checkpoint(tmp_path):
    from transformers import AutoModelForImageClassification

    from hf_nullspace.finetune import main

    out = tmp_path / "out"
    args = cli_args(
        write_parquet(tmp_path / "data"),
        save_model(tmp_path / "model"),
        str(out),
        "--use_lora",
        "true",
        "--lora_r",
        "4",
        "--merge_lora",
        "true",
        "--save_strategy",
        "no",
    )
    results = main(args)
    assert results.lora["merged"] is True and results.lora["r"] == 4
    files = set(os.listdir(out))
    assert "model.safetensors" in files and "config.json" in files
    assert not {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE} & files
    merged = AutoModelForImageClassification.from_pretrained(out)
    base = AutoModelForImageClassification.from_pretrained(tmp_path / "model")
    assert not any("lora" in name for name in merged.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), base.state_dict().values()))
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "PeftModel" not in card


def test_savings_count_the_adamw_state_of_frozen_parameters():
    savings = lora_savings(make_tiny_vit(), LORA)
    full, lora = savings["full"], savings["lora"]
    assert full["trainable"] == full["total"] and lora["trainable"] < full["total"] / 5
    assert savings["saved_bytes"] == 12 * (full["trainable"] - lora["trainable"]) - 4 * (
        lora["total_with_adapters"] - full["total"]
    )


# ---- train -> card -> push -> load, against the local Hub server ---------------------------------------------------


@pytest.mark.slow
def test_lora_run_is_pushed_and_loads_with_peft_from_the_hub(hub_server, tmp_path):
    endpoint, _, log_path = hub_server
    data = write_parquet(tmp_path / "data")
    local_base = save_model(tmp_path / "model")
    # the base model lives on the Hub: the adapter's card and config name it by its Hub id
    run_fresh(
        f"""
        from huggingface_hub import HfApi

        api = HfApi(token={HUB_TOKEN!r})
        api.create_repo("user/tiny-base", exist_ok=True)
        api.upload_folder(repo_id="user/tiny-base", folder_path={local_base!r})
        """,
        endpoint,
        tmp_path / "hf_home_base",
    )
    out = tmp_path / "out"
    args = cli_args(
        data,
        "user/tiny-base",
        str(out),
        "--use_lora",
        "true",
        "--lora_r",
        "4",
        "--lora_dropout",
        "0.0",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "user/tiny-lora",
        "--hub_token",
        HUB_TOKEN,
        "--save_strategy",
        "no",
    )
    run_fresh(f"from hf_nullspace.finetune import main; main({args!r})", endpoint, tmp_path / "hf_home_train")
    files = set(os.listdir(out))
    assert {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE} <= files and "model.safetensors" not in files

    pixel_values, _ = template_images(4, seed=11)
    from safetensors.torch import load_file, save_file

    save_file({"pixel_values": pixel_values}, tmp_path / "input.safetensors")
    load = run_fresh(
        f"""
        import json
        import torch
        from huggingface_hub import HfApi, ModelCard
        from peft import PeftModel
        from safetensors.torch import load_file, save_file
        from transformers import AutoModelForImageClassification

        base = AutoModelForImageClassification.from_pretrained("user/tiny-base")
        model = PeftModel.from_pretrained(base, "user/tiny-lora").eval()
        pixel_values = load_file({str(tmp_path / "input.safetensors")!r})["pixel_values"]
        with torch.no_grad():
            save_file({{"logits": model(pixel_values=pixel_values).logits}}, {str(tmp_path / "hub.safetensors")!r})
        card = ModelCard.load("user/tiny-lora")
        print(json.dumps({{
            "files": sorted(HfApi().list_repo_files("user/tiny-lora")),
            "base_model": card.data.base_model,
            "library_name": card.data.library_name,
            "tags": card.data.tags,
            "text": card.text,
        }}))
        """,
        endpoint,
        tmp_path / "hf_home_load",
    )
    loaded = json.loads(load.stdout.strip().splitlines()[-1])
    assert {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, "README.md", "preprocessor_config.json"} <= set(loaded["files"])
    assert "model.safetensors" not in loaded["files"]
    assert not any(f.startswith("checkpoint-") or f.endswith((".bin", ".pt")) for f in loaded["files"])
    assert loaded["base_model"] == "user/tiny-base" and loaded["library_name"] == "peft" and "lora" in loaded["tags"]
    assert 'PeftModel.from_pretrained(base, "user/tiny-lora")' in loaded["text"]
    adapter_config = json.loads((out / ADAPTER_CONFIG_FILE).read_text())
    assert adapter_config["base_model_name_or_path"] == "user/tiny-base"

    # the pushed adapter gives the logits of the trained adapter in the output folder
    from transformers import AutoModelForImageClassification

    local = peft.PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(local_base), str(out))
    with torch.no_grad():
        expected = local.eval()(pixel_values=pixel_values).logits
    torch.testing.assert_close(load_file(tmp_path / "hub.safetensors")["logits"], expected, rtol=1e-5, atol=1e-5)
    assert HUB_TOKEN not in log_path.read_text()
