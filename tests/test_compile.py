"""The training step's own path: one noise hook for the run, no per-step lookups or copies, no per-step collective,
and a `torch.compile`d model that is compiled once, not once per step or per refresh."""

import shutil
import types

import pytest
import torch
from testing_utils import NO_DROPOUT, make_trainer, reading_tiny_vit, template_images
from transformers import TrainerCallback

from hf_nullspace import embedding
from hf_nullspace.config import NullspaceArguments
from hf_nullspace.embedding import find_patch_embedding

# a fixed start (no scale calibration: an untrained model can take its 40 doublings) and few updates: these tests are
# about the training step's path, not about synthesis
FAST = dict(noise_max_updates=5, noise_refresh_steps=2, noise_init_limit=3.0)


def fast_trainer(tmp_path, model=None, nullspace_args=None, **training):
    # a compiled model's forward signature is (*args, **kwargs): keep the batch's columns
    training = {"max_steps": 8, "remove_unused_columns": False, **training}
    return make_trainer(tmp_path, nullspace_args or NullspaceArguments(**FAST), model, **training)


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


class GraphsAfterStep(TrainerCallback):
    """Records dynamo's count of compiled graphs at the end of every optimiser step."""

    def __init__(self):
        self.graphs = []

    def on_step_end(self, args, state, control, **kwargs):
        self.graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def compiled_run(tmp_path, backend, nullspace_args=None, max_steps=8):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    # no dropout: the compiled run's losses are compared with an eager run's, whose dropout masks would differ
    model = torch.compile(reading_tiny_vit(**NO_DROPOUT), backend=backend)
    trainer = fast_trainer(tmp_path, model=model, nullspace_args=nullspace_args, max_steps=max_steps)
    graphs = GraphsAfterStep()
    trainer.add_callback(graphs)
    trainer.train()
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return trainer, graphs.graphs, breaks


# aot_eager runs AOT autograd (functionalisation, the joint graph) like inductor, without generating code; the
# separate-pass variant checks dynamo's graph count only ("eager"), to keep the test short
@pytest.mark.parametrize(
    ("shared_forward", "backend"), [(True, "aot_eager"), (False, "eager")], ids=["shared", "separate"]
)
def test_compiled_model_is_compiled_once_over_steps_and_refreshes(tmp_path, shared_forward, backend):
    nullspace_args = NullspaceArguments(**FAST, noise_shared_forward=shared_forward)
    trainer, graphs, breaks = compiled_run(tmp_path / "compiled", backend, nullspace_args)
    assert [r["step"] for r in trainer.noise_history] == [0, 2, 4, 6]  # 4 refreshes, noise changed 3 times
    # the graphs of the first step (one shared pass; or a clean and a noisy pass) and never one more
    assert graphs == [1 if shared_forward else 2] * 8, graphs
    assert breaks == 0

    eager = fast_trainer(tmp_path / "eager", model=reading_tiny_vit(**NO_DROPOUT), nullspace_args=nullspace_args)
    eager.train()
    torch.testing.assert_close(torch.tensor(losses(trainer)), torch.tensor(losses(eager)), rtol=1e-4, atol=1e-5)
    for a, b in zip(trainer.noise_bank.noises, eager.noise_bank.noises):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="inductor needs a C++ compiler")
def test_inductor_compiles_once(tmp_path):
    trainer, graphs, breaks = compiled_run(tmp_path, "inductor", max_steps=6)
    assert [r["step"] for r in trainer.noise_history] == [0, 2, 4]
    assert graphs == [1] * 6 and breaks == 0


def test_per_step_path_installs_once_looks_up_once_moves_noise_once_per_refresh(tmp_path, monkeypatch):
    trainer = fast_trainer(tmp_path)
    walks, hooks, copies = [], [], []
    original_search = embedding._search
    monkeypatch.setattr(embedding, "_search", lambda *a: walks.append(1) or original_search(*a))
    original_init, original_set = embedding.NoiseHook.__init__, embedding.NoiseHook.set_noise
    monkeypatch.setattr(
        embedding.NoiseHook, "__init__", lambda s, *a, **k: hooks.append(1) or original_init(s, *a, **k)
    )
    monkeypatch.setattr(embedding.NoiseHook, "set_noise", lambda s, n: copies.append(1) or original_set(s, n))
    trainer.train()
    assert trainer.state.global_step == 8 and len(trainer.noise_history) == 4
    assert len(hooks) == 1  # one hook for the run
    assert len(copies) == 4  # the noise crosses to the device once per refresh
    assert not walks  # the projection was found before training (the trainer's check) and is cached since
    _, projection = find_patch_embedding(trainer.model)
    assert not projection._forward_hooks  # removed at the end of the run


def test_compute_loss_outside_training_leaves_no_hook(tmp_path):
    trainer = fast_trainer(tmp_path)
    pixel_values, labels = template_images(8, seed=3)
    inputs = {"pixel_values": pixel_values, "labels": labels}
    trainer.refresh_noise(trainer.model, inputs)
    trainer.model.train()
    assert torch.isfinite(trainer.compute_loss(trainer.model, inputs))
    assert not find_patch_embedding(trainer.model)[1]._forward_hooks


def test_several_processes_agree_on_a_redraw_every_k_steps_not_every_step(tmp_path, monkeypatch):
    """A non-finite noisy loss on one process: that process trains the step on its clean loss (finite gradients),
    and the processes agree on a redraw at the next check, with one all-reduce every `non_finite_check_steps`."""
    trainer = fast_trainer(tmp_path)
    trainer.non_finite_check_steps = 3
    reductions = []
    fake = types.SimpleNamespace(num_processes=2, process_index=0)

    def reduce(tensor, reduction):
        if reduction == "sum":  # the agreement (synthesis averages its statistic and gradient: "mean")
            reductions.append(trainer.state.global_step)
        return tensor  # the other process is a copy of this one, that saw nothing

    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: fake.num_processes))
    monkeypatch.setattr(type(trainer.accelerator), "process_index", property(lambda self: fake.process_index))
    monkeypatch.setattr(trainer.accelerator, "reduce", reduce)
    trainer.nullspace_args.noise_refresh_steps = 100
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's loop, which this test does not run
    pixel_values, labels = template_images(8, seed=3)
    inputs = {"pixel_values": pixel_values, "labels": labels}
    model = trainer.model
    poison = {"on": False}

    def poison_noisy_half(module, args, output):
        if poison["on"] and module.training and output.shape[0] == 16:
            output = output.clone()
            output[8:] = float("nan")
        return output

    handle = model.classifier.register_forward_hook(poison_noisy_half)
    try:
        for step in range(7):
            trainer.state.global_step = step
            poison["on"] = step == 1
            model.zero_grad()
            loss = trainer.training_step(model, inputs)
            assert torch.isfinite(loss)
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    finally:
        handle.remove()
    assert reductions == [0, 3, 6]  # one all-reduce per check, never one per step
    assert [(r["step"], r["reason"]) for r in trainer.noise_history] == [(0, "schedule"), (3, "non-finite loss")]
