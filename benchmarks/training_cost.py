"""Training cost, as a user gets it: per-step time of NullspaceTrainer (modes none, random, nullspace, and the
synthesis options) next to a plain `transformers.Trainer`, a bare PyTorch loop (the floor: what the Trainer itself
adds) and the authors' loop (a bare PyTorch loop doing the method's work: a synthesis every refresh, the clean and
noisy copies in one doubled batch), on the same model, data and batch size, with library defaults.

How it measures, and why (an earlier version, one process per variant timing `trainer.train()`, disagreed with
in-process timings by up to 0.4x the plain Trainer's step; a later one, every variant in a thread of one process,
slowed every step by about half at 2 torch threads, each thread with a thread pool of its own):

- One process per variant, as a user's run is. Each builds the model and data once, then for the warm-up and every
  repeat a fresh model copy and trainer; the runs step in turn (a ring of semaphores): step k of every variant runs
  at nearly the same moment (A1 B1 C1 A2 B2 C2 ...), so load from anything else on the machine hits all variants
  alike, and the processes not stepping sleep. Before the timed repeats every variant runs 2 untimed steps with a
  synthesis (kernel and allocator set-up for the clean and the doubled batch): a per-process timing of a 1-2 s run
  had those one-off costs inside it.
- A step is timed from the end of the previous one to its own end (loading the next batch is in; `train()`'s set-up
  is not). The cost of a refresh period is the sum of its steps, synthesis included; ratios to the plain Trainer are
  taken within a repeat, then the median over repeats.
- Library defaults everywhere (`TrainingArguments` and `NullspaceArguments()`); a variant changes only the mode or
  the option it names.
- Threads: `--threads` (default: torch's, the core count: what a user gets). On a machine shared with other jobs,
  more than one torch thread per process makes every timing erratic (OpenMP threads waiting on preempted siblings:
  10x and more on a 2-core machine with 3 busy processes); there, `--threads 1` gives stable ratios. The load average
  before and after is saved with the result.
- `train()` whole (`--whole-train`, default for the bundled shapes): each variant's `trainer.train()` timed as a user
  calls it, one after the other in this process, set-up and the noise bank's export included, as a cross-check of
  the step-interleaved ratios.
- Peak memory (`--memory`): each variant once more in its own process, 2 steps with a synthesis; peak RSS (CPU) or
  peak allocated CUDA memory, and its ratio to the plain Trainer's.

Shapes: `bundled` (the bundled ViT and MNIST digits, 32 px, batch 32, 80 steps = two refresh periods of 40, all
timed), `textures` (the second bundled ViT and its colour photo and texture patches, built on first use, the same
settings), `vit-s16` and `vit-b16` (random init, 224 px, patch 16, batch 8, 1000 classes, random images; a few steps
per run, the first with the synthesis: the cost of a 40-step refresh period is composed as 40 x the median step
without synthesis + the synthesis), and `tiny` (a smoke test of the same path).

    python benchmarks/training_cost.py                             # bundled model, about 10 minutes on 2 cores
    python benchmarks/training_cost.py --shape textures --threads 1  # the second bundled ViT, one torch thread
    python benchmarks/training_cost.py --threads 1 --shape vit-b16  # ViT-B/16 shape on CPU
    python benchmarks/training_cost.py --shape vit-s16 --variants plain_trainer,nullspace,nullspace_sub_batch
    python benchmarks/training_cost.py --plot benchmarks/results/training_cost.json  # redraw a result's figure
    bash benchmarks/gpu.sh                                         # ViT-B/16, bf16, on one GPU
"""

import argparse
import copy
import gc
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")

# variant -> (kind, NullspaceArguments overrides); kind: "trainer", "nullspace_trainer", "bare"
VARIANTS = {
    "bare_clean": ("bare", {"nullspace_mode": "none"}),
    "plain_trainer": ("trainer", {}),
    "none": ("nullspace_trainer", {"nullspace_mode": "none"}),
    "random": ("nullspace_trainer", {"nullspace_mode": "random"}),
    "nullspace": ("nullspace_trainer", {}),
    "authors_loop": ("bare", {}),
    # the authors' synthesis data: a stream of training batches, one per update (its stop rule over 8 batches)
    "authors_loop_stream": ("bare", {"noise_synthesis_data": "stream", "noise_stop_batches": 8}),
    # options, measured on demand (--variants)
    "nullspace_separate": ("nullspace_trainer", {"noise_shared_forward": False}),
    "nullspace_sub_batch": ("nullspace_trainer", {"noise_synthesis_batch_size": "quarter"}),
    "nullspace_warm_start": ("nullspace_trainer", {"noise_warm_start": True}),
    "nullspace_stream": ("nullspace_trainer", {"noise_synthesis_data": "stream", "noise_stop_batches": 8}),
    "nullspace_authors_start": ("nullspace_trainer", {"noise_init_limit": 3.0}),
    "nullspace_sub_batch_warm_start": (
        "nullspace_trainer",
        {"noise_synthesis_batch_size": "quarter", "noise_warm_start": True},
    ),
}
DEFAULT_VARIANTS = ("bare_clean", "plain_trainer", "none", "random", "nullspace", "authors_loop")

SHAPES = {
    "bundled": dict(batch_size=32, steps=80, repeats=5, samples=1024, warmup=2),
    # the second bundled ViT (colour photo and texture patches, same architecture), its data built on first use
    "textures": dict(batch_size=32, steps=80, repeats=5, samples=1024, warmup=2),
    # ViT-S/16 and ViT-B/16 (Dosovitskiy et al. / DeiT): hidden, layers, heads, MLP
    # no separate warm-up: the first step of a run (with the synthesis) is not in the per-step ratios anyway; the
    # noisy step is the same work in every mode, so the default variants are the plain and bare references, nullspace
    # and the authors' loop, and the synthesis options are measured by the synthesis profile
    "vit-s16": dict(
        batch_size=8,
        steps=9,
        repeats=1,
        samples=80,
        warmup=0,
        hidden=384,
        layers=12,
        heads=6,
        mlp=1536,
        variants=("bare_clean", "plain_trainer", "nullspace", "authors_loop"),
    ),
    "vit-b16": dict(
        batch_size=8,
        steps=5,
        repeats=1,
        samples=48,
        warmup=0,
        hidden=768,
        layers=12,
        heads=12,
        mlp=3072,
        variants=("bare_clean", "plain_trainer", "nullspace", "authors_loop"),
    ),
    # a smoke test of the same path (benchmarks/gpu.sh --tiny)
    "tiny": dict(batch_size=8, steps=4, repeats=1, samples=32, warmup=2, hidden=64, layers=2, heads=2, mlp=128),
}


# ---- model and data -------------------------------------------------------------------------------------------------


# bundled shape -> (model folder under hf_nullspace/assets, training data folder; None: built on first use)
BUNDLED = {
    "bundled": ("vit-tiny-mnist", os.path.join(ROOT, "hf_nullspace", "assets", "mnist")),
    "textures": ("vit-tiny-textures", None),
}


def _textures_data(workdir: str) -> str:
    """The texture patches' folder, built (deterministically, from scikit-image) by train_base_model.py."""
    folder = os.path.join(workdir, "textures-data")
    if not os.path.isfile(os.path.join(folder, "train.parquet")):
        script = os.path.join(ROOT, "trainer_scripts", "train_base_model.py")
        command = [sys.executable, script, "--dataset", "textures", "--data-only", "--data-dir", folder]
        subprocess.run(command, check=True, capture_output=True)
    return folder


def build(shape: str, samples: int, seed: int = 0, workdir: str = "/tmp/hf_nullspace_training_cost"):
    """(model, dataset of {"pixel_values", "labels"} rows) for a shape."""
    import torch
    from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    if shape in BUNDLED:
        from hf_nullspace.data import SkipCounter, collate_fn, load_image_dataset, prepare_dataset
        from hf_nullspace.data.transforms import EvalTransform

        model_dir, data_dir = BUNDLED[shape]
        model = AutoModelForImageClassification.from_pretrained(
            os.path.join(ROOT, "hf_nullspace", "assets", model_dir)
        )
        dataset = load_image_dataset(data_dir or _textures_data(workdir), split="train")
        transform = EvalTransform(32, 1.0, [0.5] * 3, [0.5] * 3)  # both bundled processors: 32 px, mean = std = 0.5
        dataset = prepare_dataset(
            dataset.select(range(samples)), transform, "image", "label", model.config.num_labels, SkipCounter()
        )
        batch = collate_fn(dataset.__getitems__(list(range(samples))))
        pixel_values, labels = batch["pixel_values"], batch["labels"]
    else:
        spec = SHAPES[shape]
        config = ViTConfig(
            image_size=224,
            patch_size=16,
            num_channels=3,
            hidden_size=spec["hidden"],
            num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"],
            intermediate_size=spec["mlp"],
            num_labels=1000,
        )
        model = ViTForImageClassification(config)
        generator = torch.Generator().manual_seed(seed)
        pixel_values = torch.randn(samples, 3, 224, 224, generator=generator)
        labels = torch.randint(0, 1000, (samples,), generator=generator)
    return model, Rows(pixel_values, labels)


class Rows:
    """A map-style dataset of {"pixel_values", "labels"} rows over two tensors."""

    def __init__(self, pixel_values, labels):
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


NOISE_OVERRIDES = {}  # --noise-init-limit: applied to every variant with noise


def nullspace_arguments(overrides: dict, batch_size: int):
    from hf_nullspace import NullspaceArguments

    overrides = {**NOISE_OVERRIDES, **overrides}
    if overrides.get("noise_synthesis_batch_size") == "quarter":
        overrides["noise_synthesis_batch_size"] = max(1, batch_size // 4)
    return NullspaceArguments(**overrides)


# ---- one timed run of a variant -------------------------------------------------------------------------------------


class Baton:
    """Step-level interleaving of several runs, one process each: only the holder runs; each passes the baton on after
    every optimiser step, so step k of every variant runs at nearly the same moment (A1 B1 C1 A2 B2 C2 ...). One
    semaphore per process: the others sleep in it, their threads (and thread pools) idle."""

    def __init__(self, context, count):
        self.turns = [context.Semaphore(0) for _ in range(count)]
        self.done = context.Array("b", count)
        self.index = None  # this process's place in the ring, set in the worker

    def start(self):
        self.done[:] = [0] * len(self.turns)
        self.turns[0].release()

    def wait(self, name=None):
        self.turns[self.index].acquire()

    def pass_on(self, name=None, finished=False):
        count = len(self.turns)
        if finished:
            self.done[self.index] = 1
        for step in range(1, count + 1):
            following = (self.index + step) % count
            if not self.done[following]:
                self.turns[following].release()
                return


class StepClock:
    """The duration of every optimiser step; as a TrainerCallback or called by the bare loops. A step runs from the
    end of the previous one (so loading the next batch is in) or, for the first, from its own start; between steps
    the baton goes round the other variants and that time is not counted."""

    def __init__(self, name=None, baton=None):
        self.name, self.baton = name, baton
        self.durations, self._start = [], None

    def begin(self):
        if self._start is None:
            self._start = time.perf_counter()

    def end(self):
        import torch

        if torch.cuda.is_available() and not _use_cpu():
            torch.cuda.synchronize()  # the Trainer syncs on every step's loss anyway (its NaN filter)
        self.durations.append(time.perf_counter() - self._start)
        if self.baton is not None:
            self.baton.pass_on(self.name)
            self.baton.wait(self.name)
        self._start = time.perf_counter()

    def as_callback(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.begin()

            def on_step_end(self, args, state, control, **kwargs):
                clock.end()

        return Callback()


def training_arguments(workdir, steps, batch_size):
    """Library defaults; only what a benchmark must set (no saving, no progress bar, the step count, the device)."""
    from transformers import TrainingArguments

    training = TrainingArguments(
        output_dir=workdir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        use_cpu=_use_cpu(),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        bf16=_bf16(),
    )
    _ = training.device  # sets up (and resets) accelerate's shared state: here, before any run starts, not during one
    return training


def training_defaults():
    """`TrainingArguments`' defaults, read without making one (that would reset accelerate's shared state)."""
    import dataclasses

    from transformers import TrainingArguments

    return types.SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(TrainingArguments)})


def prepare_trainer(kind, model, data, overrides, batch_size, steps, workdir, clock):
    from transformers import Trainer

    from hf_nullspace import NullspaceTrainer

    training = training_arguments(workdir, steps, batch_size)
    common = dict(model=model, args=training, train_dataset=data, callbacks=[clock.as_callback()])
    if kind == "trainer":
        trainer = Trainer(**common)
    else:
        trainer = NullspaceTrainer(**common, nullspace_args=nullspace_arguments(overrides, batch_size))

    def run():
        trainer.train()
        return list(getattr(trainer, "noise_history", []))

    return run


def run_bare(model, data, overrides, batch_size, steps, clock, defaults):
    """A bare PyTorch loop with the Trainer's defaults (AdamW as the Trainer builds it, linear decay, clipping at 1.0,
    shuffled loader); with noise it does the method's work as the authors' loop does: a synthesis every refresh (on
    the current batch, or with `noise_synthesis_data="stream"` on a second shuffled loader, one batch per update, as
    the authors ran it), clean and noisy copies in one doubled forward (a hook registered once)."""
    import torch
    import torch.nn.functional as F
    from transformers import set_seed

    from hf_nullspace import synthesize_noise
    from hf_nullspace.embedding import find_patch_embedding

    device = torch.device("cpu" if _use_cpu() else "cuda")
    model.to(device).train()
    args = nullspace_arguments(overrides, batch_size)
    set_seed(defaults.seed)  # as Trainer.train does
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=defaults.learning_rate,
        weight_decay=defaults.weight_decay,
        fused=defaults.optim == "adamw_torch_fused",
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / steps))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=False)
    noisy = args.nullspace_mode != "none"
    noise_pair, history, training_forward = None, [], False
    stream = None
    if noisy and args.noise_synthesis_data == "stream":
        synthesis_loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)

        def endless():
            while True:
                for batch in synthesis_loader:
                    yield batch["pixel_values"].to(device)

        stream = endless()
    if noisy:
        _, projection = find_patch_embedding(model)

        def hook(module, inputs, output):  # during the training forward: clean first half, noisy second half
            if not training_forward:
                return None
            pair = noise_pair.view(2, 1, *output.shape[1:]).to(output.dtype)
            return (output.unflatten(0, (2, -1)) + pair).flatten(0, 1)

        handle = projection.register_forward_hook(hook)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16())
    step = 0
    try:
        while step < steps:
            for batch in loader:
                if step >= steps:
                    break
                pixel_values, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
                clock.begin()
                if noisy and step % args.noise_refresh_steps == 0:
                    t = time.perf_counter()
                    rows = args.noise_synthesis_batch_size or batch_size
                    with autocast:
                        result = synthesize_noise(model, stream if stream is not None else pixel_values[:rows], args)
                    noise = result.noise.transpose(1, 2)  # (1, D, N), viewed as (1, D, h, w) in the hook
                    noise_pair = torch.stack([torch.zeros_like(noise), noise])
                    history.append({"updates": result.updates, "seconds": time.perf_counter() - t})
                with autocast:
                    if noisy:
                        training_forward = True
                        logits = model(pixel_values=torch.cat([pixel_values, pixel_values])).logits.float()
                        training_forward = False
                        clean, noisy_logits = logits.split(len(labels))
                        loss = F.cross_entropy(clean, labels) + args.noisy_loss_weight * F.cross_entropy(
                            noisy_logits, labels
                        )
                    else:
                        loss = F.cross_entropy(model(pixel_values=pixel_values).logits.float(), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                clock.end()
                step += 1
    finally:
        if noisy:
            handle.remove()
    return history


_DEVICE = {"cpu": True, "bf16": False}


def _use_cpu():
    return _DEVICE["cpu"]


def _bf16():
    return _DEVICE["bf16"]


def prepare_variant(variant, base_model, data, batch_size, steps, workdir, fresh_copy=True, baton=None):
    """Builds a run of `variant` (model copy, arguments, trainer: all of accelerate's set-up) and returns a function
    that runs it and returns its record."""
    kind, overrides = VARIANTS[variant]
    model = copy.deepcopy(base_model) if fresh_copy else base_model
    clock = StepClock(variant, baton)
    if kind == "bare":
        defaults = training_defaults()
        train = lambda: run_bare(model, data, overrides, batch_size, steps, clock, defaults)  # noqa: E731
    else:
        train = prepare_trainer(kind, model, data, overrides, batch_size, steps, os.path.join(workdir, variant), clock)

    def run() -> dict:
        history = train()
        return {
            "seconds": sum(clock.durations),
            "per_step": clock.durations,
            "synthesis": [r["seconds"] for r in history],
            "updates": [r.get("updates") for r in history],
        }

    return run


class Interleaved:
    """One worker process per variant, kept for the warm-up and every repeat; each builds the model and data once and
    a fresh model copy and trainer per run. Runs step in turn (see `Baton`), so step k of every variant runs at nearly
    the same moment, each in a process of its own, as a user's run would be. Which process runs which variant rotates
    from one run to the next: a process can be a few percent faster or slower than another for the whole of its life
    (where its memory landed), and that must not stick to one variant."""

    def __init__(self, variants, setup: dict):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pool inherited through fork
        self.variants = list(variants)
        self.runs = 0
        self.baton = Baton(context, len(variants))
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in variants]
        self.workers = [
            context.Process(target=_worker, args=(i, setup, self.baton, command, self.results), daemon=True)
            for i, command in enumerate(self.commands)
        ]
        for worker in self.workers:
            worker.start()
        self._collect("built")

    def run(self, steps: int) -> dict:
        """One run of every variant, `steps` optimiser steps each; returns variant -> record."""
        count = len(self.variants)
        for i, command in enumerate(self.commands):
            command.put((self.variants[(i + self.runs) % count], steps))
        self.runs += 1
        self._collect("ready")
        self.baton.start()
        return self._collect("record")

    def close(self):
        for command in self.commands:
            command.put(None)
        for worker in self.workers:
            worker.join(timeout=30)

    def _collect(self, kind: str) -> dict:
        found = {}
        while len(found) < len(self.variants):
            name, message, value = self.results.get()
            if message == "error":
                self.close()
                raise RuntimeError(f"{name} failed:\n{value}")
            assert message == kind, (message, kind)
            found[name] = value
        return found


def _worker(index, setup, baton, commands, results):
    import traceback

    _DEVICE.update(setup["device"])
    NOISE_OVERRIDES.update(setup["noise_overrides"])
    baton.index = index
    name = f"worker {index}"
    try:
        import torch

        torch.set_num_threads(setup["threads"])
        model, data = build(setup["shape"], setup["samples"], workdir=setup["workdir"])
        model.to("cpu" if _use_cpu() else "cuda")
        results.put((name, "built", None))
        while (command := commands.get()) is not None:
            name, steps = command
            run = prepare_variant(name, model, data, setup["batch_size"], steps, setup["workdir"], baton=baton)
            results.put((name, "ready", None))
            baton.wait()
            try:
                record = run()
            finally:
                baton.pass_on(finished=True)
            results.put((name, "record", record))
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put((name, "error", traceback.format_exc()))


def run_whole(variants, base_model, data, batch_size, steps, workdir, repeats) -> dict:
    """`train()` timed whole, as a user calls it: in each repeat every variant once, one after the other (in a fresh
    random order), each a fresh model copy and trainer built outside the timing. Each record also holds the sum
    of its steps, so what `train()` adds around them (its set-up; for the noise modes the noise bank's export and
    figure at the end) is known."""
    runs = {v: [] for v in variants}
    for repeat in range(repeats):
        order = list(variants)
        random.Random(repeat).shuffle(order)  # no fixed neighbours: a run can be slowed by the one before it
        for variant in order:
            run = prepare_variant(variant, base_model, data, batch_size, steps, workdir)
            gc.collect()  # the previous run's trainer (reference cycles) is freed here, not inside this run's timing
            start = time.perf_counter()
            record = run()
            seconds = time.perf_counter() - start
            runs[variant].append({"seconds": seconds, "steps_seconds": record["seconds"]})
            print(
                f"train() whole, repeat {repeat + 1}/{repeats} {variant}: {seconds:.2f} s "
                f"(its steps {record['seconds']:.2f} s)",
                flush=True,
            )
    return runs


def summarise_whole(whole: dict, summary: dict) -> dict:
    """Per variant, medians over repeats: `train()`'s seconds, their ratio to the plain Trainer's in the same repeat,
    the same for the sum of its steps, what `train()` adds around the steps, and the step-interleaved ratio."""
    reference = whole.get("plain_trainer")
    result = {}
    for variant, records in whole.items():
        row = {
            "train_seconds": statistics.median(r["seconds"] for r in records),
            "around_steps_seconds": statistics.median(r["seconds"] - r["steps_seconds"] for r in records),
            "ratio_to_plain_trainer_step_interleaved": summary[variant].get("ratio_to_plain_trainer"),
        }
        if reference:
            pairs = list(zip(records, reference))
            row["ratio_to_plain_trainer"] = statistics.median(r["seconds"] / q["seconds"] for r, q in pairs)
            row["ratio_to_plain_trainer_steps_only"] = statistics.median(
                r["steps_seconds"] / q["steps_seconds"] for r, q in pairs
            )
            row["ratio_per_repeat"] = [r["seconds"] / q["seconds"] for r, q in pairs]
        result[variant] = row
    return result


# no-grad forward passes of the automatic start's scale calibration on a trained model (5-7 on the bundled ViT); a
# randomly initialised model can be insensitive to the noise at any scale and take the calibration's maximum (40+)
CALIBRATION_FORWARDS = 6


def synthesis_profile(
    base_model, data, batch_size, summary, refresh, forced=(1, 6), repeats=3, updates=(10, 33, 95)
) -> dict:
    """The cost of one synthesis update, on the whole batch, on a quarter of it (`noise_synthesis_batch_size`) and on
    a stream of batches (`noise_synthesis_data="stream"`: a clean forward per update, no cached clean logits),
    from syntheses forced to take exactly `forced` updates (epsilon out of reach, the authors' fixed start, no
    fallback), each timed next to a bare clean training step (forward, backward, AdamW) of the same batch, so that
    load from other jobs cancels: costs are in those clean steps. With the noisy step's ratio to the plain Trainer's
    (from the timed runs), the synthesis share of a refresh period that U updates per refresh would give, for the U
    measured and a few more: the fixed part the timed syntheses took beyond their updates, plus the automatic start's
    calibration (`CALIBRATION_FORWARDS` no-grad forwards) when the runs used a fixed start."""
    import torch
    import torch.nn.functional as F

    from hf_nullspace import NullspaceArguments, synthesize_noise

    device = "cpu" if _use_cpu() else "cuda"
    model = copy.deepcopy(base_model).to(device)
    pixel_values, labels = data.pixel_values[:batch_size].to(device), data.labels[:batch_size].to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=_bf16())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the model stays as it is

    def timed(function) -> float:
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def clean_step():
        model.train()
        with autocast:
            loss = F.cross_entropy(model(pixel_values=pixel_values).logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def forward(rows):
        model.eval()
        with torch.no_grad(), autocast:
            model(pixel_values=pixel_values[:rows])

    timed(clean_step)  # optimiser state, kernels
    nullspace, plain = summary.get("nullspace") or {}, summary.get("plain_trainer") or {}
    step_ratio = nullspace.get("ratio_to_plain_trainer_without_synthesis")  # noisy step / plain Trainer step
    plain_step = plain.get("seconds_per_step_without_synthesis")
    result = {}
    for variant, rows in (
        ("nullspace", batch_size),
        ("nullspace_sub_batch", max(1, batch_size // 4)),
        ("nullspace_stream", batch_size),
    ):
        estimates = []
        for _ in range(repeats):  # the median of `repeats` estimates: a synthesis is long, and catches load alone
            in_steps = {}
            for count in forced:
                args = NullspaceArguments(
                    noise_epsilon=1e-12, noise_max_updates=count, noise_init_limit=3.0, noise_fallback=False
                )

                def synthesis(rows=rows, args=args, count=count, stream=variant == "nullspace_stream"):
                    # a stream: an iterator of batches (the same tensor here), whose clean logits are not cached
                    batches = iter([pixel_values[:rows]] * (count + 1)) if stream else pixel_values[:rows]
                    with autocast:
                        assert synthesize_noise(model, batches, args).updates == count

                before = timed(clean_step)
                seconds = timed(synthesis)
                in_steps[count] = seconds / ((before + timed(clean_step)) / 2)
            estimates.append((in_steps[forced[1]] - in_steps[forced[0]]) / (forced[1] - forced[0]))
        reference = timed(clean_step)
        per_update = statistics.median(estimates)  # in clean steps
        row = {
            "rows": rows,
            "update_x_bare_clean_step": per_update,
            "estimates": estimates,
            "no_grad_forward_x_bare_clean_step": timed(lambda rows=rows: forward(rows)) / reference,
        }
        measured = summary.get(variant)
        if step_ratio and plain_step:
            # in units of the plain Trainer's step: the bare clean step is its bare_clean ratio of it
            bare = (summary.get("bare_clean") or {}).get("ratio_to_plain_trainer_without_synthesis") or 1.0
            update = per_update * bare
            calibration = CALIBRATION_FORWARDS * row["no_grad_forward_x_bare_clean_step"] * bare
            if measured:
                measured_updates = measured["updates_per_refresh_median"] or 0
                fixed = max(0.0, measured["synthesis_seconds_per_refresh"] / plain_step - measured_updates * update)
            elif "nullspace" in result:
                # not run as a variant: the whole batch's fixed part (forwards) scaled to these rows, plus the
                # held-out statistic's forward of the other rows
                full = result["nullspace"]
                scale = row["no_grad_forward_x_bare_clean_step"] / full["no_grad_forward_x_bare_clean_step"]
                fixed = full["fixed_x_plain_step"] * scale + full["no_grad_forward_x_bare_clean_step"] * bare * (
                    1 - scale
                )
                measured_updates = 0
                row["fixed_estimated_from_the_whole_batch"] = True
            else:
                fixed, measured_updates = 0.0, 0
            if NOISE_OVERRIDES.get("noise_init_limit") is not None and measured:  # fixed start: add the calibration
                fixed += calibration
                row["calibration_forwards_added"] = CALIBRATION_FORWARDS
            row["fixed_x_plain_step"] = fixed
            row["update_x_noisy_step"] = update / step_ratio
            row["share_at_updates"] = {}
            for u in sorted({measured_updates, *updates}):
                synthesis = fixed + u * update
                row["share_at_updates"][str(u)] = synthesis / (refresh * step_ratio + synthesis)
            # the most updates per refresh that keep synthesis within 10% of the finetune's time
            row["updates_within_10_percent"] = max(0.0, (refresh * step_ratio / 9 - fixed) / update)
        result[variant] = row
    return result


# ---- memory: each variant in its own process ------------------------------------------------------------------------


def memory_worker(args) -> dict:
    import torch

    model, data = build(args.shape, args.samples, workdir=args.workdir)
    model.to("cpu" if _use_cpu() else "cuda")
    # the peak of the run itself, not of loading the data: Linux resets the high-water mark on request
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak_field = "VmHWM:"
    except OSError:
        peak_field = None
    base = _status_mb("VmRSS:")
    if torch.cuda.is_available() and not _use_cpu():
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    prepare_variant(args.memory_worker, model, data, args.batch_size, 2, args.workdir, fresh_copy=False)()
    peak = _status_mb(peak_field) if peak_field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"base_rss_mb": base, "peak_rss_mb": peak, "peak_of_run_only": peak_field is not None}
    if torch.cuda.is_available() and not _use_cpu():
        result.update(base_cuda_mb=base_cuda, peak_cuda_mb=torch.cuda.max_memory_allocated() / 2**20)
    return result


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---- the report -----------------------------------------------------------------------------------------------------


def _period(record: dict, steps: int, refresh: int, full_schedule: bool) -> tuple[float, float, float]:
    """(seconds of one refresh period, of a step without synthesis, of synthesis per refresh) for one run."""
    step = statistics.median(record["per_step"][1:] or record["per_step"])  # the first step holds a synthesis
    synthesis = statistics.median(record["synthesis"]) if record["synthesis"] else 0.0
    if full_schedule:  # steps = a whole number of refresh periods, all timed: nothing to compose
        return record["seconds"] / steps * refresh, step, synthesis
    return refresh * step + synthesis, step, synthesis


def summarise(runs: dict, steps: int, refresh: int, full_schedule: bool, batch_size: int) -> dict:
    """Per variant, medians over the interleaved repeats of: the cost of one refresh period (`refresh` steps and one
    synthesis) per step, its ratio to the plain Trainer's in the same repeat, the synthesis share, and the same
    without synthesis (a step's median)."""
    summary = {}
    reference = runs.get("plain_trainer")
    for variant, records in runs.items():
        periods = [_period(r, steps, refresh, full_schedule) for r in records]
        synthesis = [s for r in records for s in r["synthesis"]]
        updates = [u for r in records for u in r["updates"] if u is not None]
        row = {
            "seconds_per_step": statistics.median(p[0] for p in periods) / refresh,
            "images_per_second": statistics.median(batch_size * refresh / p[0] for p in periods),
            "seconds_per_step_without_synthesis": statistics.median(p[1] for p in periods),
            "synthesis_seconds_per_refresh": statistics.median(synthesis) if synthesis else 0.0,
            "synthesis_share": statistics.median(p[2] / p[0] for p in periods),
            "updates_per_refresh_median": statistics.median(updates) if updates else None,
            "updates_per_refresh": updates,
            "seconds_per_update": (
                statistics.median(s / u for s, u in zip(synthesis, updates) if u) if any(updates) else None
            ),
        }
        if reference and full_schedule:
            plain = [_period(r, steps, refresh, full_schedule) for r in reference]
            row["ratio_to_plain_trainer"] = statistics.median(p[0] / q[0] for p, q in zip(periods, plain))
            row["ratio_to_plain_trainer_without_synthesis"] = statistics.median(
                p[1] / q[1] for p, q in zip(periods, plain)
            )
            row["ratio_per_repeat"] = [p[0] / q[0] for p, q in zip(periods, plain)]
        elif reference:
            # long steps, few of them: step k of this variant against step k of the plain Trainer, run next to it
            # (the first step, with the synthesis, left out), median over steps and repeats; the synthesis added
            # once per refresh period of the plain Trainer's median step
            pairs = [
                r["per_step"][k] / q["per_step"][k]
                for r, q in zip(records, reference)
                for k in range(1, min(len(r["per_step"]), len(q["per_step"])))
            ]
            plain_step = statistics.median(x for q in reference for x in q["per_step"][1:])
            step_ratio = statistics.median(pairs)
            period = refresh * step_ratio * plain_step + row["synthesis_seconds_per_refresh"]
            row.update(
                seconds_per_step=period / refresh,
                images_per_second=batch_size * refresh / period,
                seconds_per_step_without_synthesis=step_ratio * plain_step,
                synthesis_share=row["synthesis_seconds_per_refresh"] / period,
                ratio_to_plain_trainer=period / (refresh * plain_step),
                ratio_to_plain_trainer_without_synthesis=step_ratio,
                step_ratios=pairs,
            )
        summary[variant] = row
    if {"plain_trainer", "bare_clean", "nullspace", "authors_loop"} <= set(summary):
        # "nullspace costs no more than the authors' loop plus the plain Trainer's own overhead", per step, x plain
        trainer_overhead = 1 - summary["bare_clean"]["ratio_to_plain_trainer"]
        library_extra = (
            summary["nullspace"]["ratio_to_plain_trainer"] - summary["authors_loop"]["ratio_to_plain_trainer"]
        )
        summary["_overheads"] = {
            "plain_trainer_minus_bare_loop_x_plain": trainer_overhead,
            "nullspace_minus_authors_loop_x_plain": library_extra,
            "without_synthesis": {
                "plain_trainer_minus_bare_loop_x_plain": 1
                - summary["bare_clean"]["ratio_to_plain_trainer_without_synthesis"],
                "nullspace_minus_authors_loop_x_plain": summary["nullspace"][
                    "ratio_to_plain_trainer_without_synthesis"
                ]
                - summary["authors_loop"]["ratio_to_plain_trainer_without_synthesis"],
            },
        }
    return summary


LABELS = {
    "bare_clean": "bare loop, clean",
    "plain_trainer": "plain Trainer",
    "none": "NullspaceTrainer, none",
    "random": "mode random",
    "nullspace": "mode nullspace",
    "authors_loop": "authors' loop",
    "nullspace_separate": "nullspace, two forwards",
    "nullspace_sub_batch": "nullspace, sub-batch synthesis",
    "nullspace_warm_start": "nullspace, warm start",
    "nullspace_authors_start": "nullspace, fixed start 3",
    "nullspace_sub_batch_warm_start": "nullspace, sub-batch + warm start",
}


def plot(result: dict, path: str) -> None:
    """A bar per variant: its cost per step x the plain Trainer's, the synthesis part hatched, and the ratio of
    `train()` timed whole as a dot where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    variants = [v for v in result["settings"]["variants"] if summary[v].get("ratio_to_plain_trainer") is not None]
    ratios = [summary[v]["ratio_to_plain_trainer"] for v in variants]
    synthesis = [r * summary[v]["synthesis_share"] for r, v in zip(ratios, variants)]
    rows = range(len(variants))
    figure, axis = plt.subplots(figsize=(9, 0.45 * len(variants) + 1.8))
    axis.barh(rows, [r - s for r, s in zip(ratios, synthesis)], color="#4c72b0", label="training steps")
    axis.barh(
        rows,
        synthesis,
        left=[r - s for r, s in zip(ratios, synthesis)],
        color="#dd8452",
        hatch="//",
        label="noise synthesis",
    )
    whole = summary.get("_whole_train", {})
    dots = [
        (i, whole[v]["ratio_to_plain_trainer"])
        for i, v in enumerate(variants)
        if "ratio_to_plain_trainer" in whole.get(v, {})
    ]
    if dots:
        axis.plot([d[1] for d in dots], [d[0] for d in dots], "k o", markersize=4, label="train() timed whole")
    dot_at = dict(dots)
    for i, ratio in enumerate(ratios):
        axis.text(max(ratio, dot_at.get(i, 0)) + 0.03, i, f"{ratio:.2f}x", va="center", fontsize=8)
    axis.axvline(1.0, color="grey", linewidth=0.8)
    axis.set_yticks(list(rows), [LABELS.get(v, v) for v in variants])
    axis.invert_yaxis()
    axis.set_xlabel("cost per step over a refresh period, x the plain Trainer's")
    settings = result["settings"]
    shape = {"bundled": "bundled MNIST ViT", "textures": "bundled textures ViT"}.get(
        settings["shape"], settings["shape"]
    )
    threads = result["torch_threads"]
    axis.set_title(
        f"{shape}, batch {settings['batch_size']}, {threads} torch thread{'s' if threads > 1 else ''}, "
        f"{result['device']}: medians of {settings['repeats']} interleaved repeats",
        fontsize=9,
    )
    axis.set_xlim(0, max(ratios + [d[1] for d in dots]) * 1.18)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bundled")
    parser.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, help="optimiser steps per run (shape default)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (shape default)")
    parser.add_argument("--batch-size", type=int, help="per-device batch size (shape default)")
    parser.add_argument("--samples", type=int, help="training rows (shape default)")
    parser.add_argument(
        "--noise-init-limit",
        type=float,
        help="a fixed start U(-limit, limit) for every variant with noise (default: the library's)",
    )
    parser.add_argument("--warmup", type=int, help="untimed steps of every variant first (shape default)")
    parser.add_argument(
        "--synthesis-profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time synthesis updates apart (default: for shapes timed in part, not bundled)",
    )
    parser.add_argument("--profile-updates", default="1,6", help="the two forced update counts of the profile")
    parser.add_argument("--profile-repeats", type=int, default=3, help="estimates of the profile (median)")
    parser.add_argument("--reuse-runs", help="a result JSON whose timed runs and memory to reuse (same settings)")
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="peak memory of each variant in its own process",
    )
    parser.add_argument(
        "--whole-train",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time train() whole per variant, as a user calls it (default: for the bundled "
        "shapes, where all steps are timed)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice, the core count)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (cuda)")
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/training_cost[_SHAPE].json)")
    parser.add_argument("--workdir", default="/tmp/hf_nullspace_training_cost")
    parser.add_argument("--plot", metavar="RESULT_JSON", help="only draw the figure of a saved result (PNG beside it)")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = SHAPES[args.shape]
    for key in ("steps", "repeats", "batch_size", "samples", "warmup"):
        if getattr(args, key) is None:
            setattr(args, key, spec[key])
    _DEVICE.update(cpu=args.device == "cpu", bf16=args.bf16)
    if args.noise_init_limit is not None:
        NOISE_OVERRIDES["noise_init_limit"] = args.noise_init_limit
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.plot:
        with open(args.plot) as f:
            plot(json.load(f), os.path.splitext(args.plot)[0] + ".png")
        print(f"Written to {os.path.splitext(args.plot)[0]}.png")
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(args)))
        return

    import torch

    from hf_nullspace import NullspaceArguments

    variants = args.variants.split(",") if args.variants else list(spec.get("variants", DEFAULT_VARIANTS))
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    refresh = NullspaceArguments().noise_refresh_steps
    full_schedule = args.steps % refresh == 0
    base_model, data = build(args.shape, args.samples, workdir=args.workdir)
    device = "cpu" if _use_cpu() else "cuda"
    base_model.to(device)
    print(
        f"shape {args.shape}, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, refresh "
        f"{refresh}, torch threads {torch.get_num_threads()}, device {device}",
        flush=True,
    )

    # the 1-minute load average (runnable processes) before and after the timings: above the thread count, other
    # jobs shared the cores and ratios at more than one thread are unreliable
    load_average = {"start": os.getloadavg()}
    reused = None
    if args.reuse_runs:  # the timed runs (and memory) of an earlier result, same settings: redo the rest only
        with open(args.reuse_runs) as f:
            reused = json.load(f)
        args.warmup, args.repeats = 0, 0
    interleaved = None
    if args.repeats:
        setup = dict(
            shape=args.shape,
            samples=args.samples,
            workdir=args.workdir,
            batch_size=args.batch_size,
            threads=torch.get_num_threads(),
            device=dict(_DEVICE),
            noise_overrides=dict(NOISE_OVERRIDES),
        )
        interleaved = Interleaved(variants, setup)
    if args.warmup:  # every variant once, short, with a synthesis (untimed)
        start = time.perf_counter()
        interleaved.run(args.warmup)
        print(f"warm-up: {time.perf_counter() - start:.1f} s", flush=True)

    runs = {v: list(reused["runs"][v]) for v in variants} if reused else {v: [] for v in variants}
    for repeat in range(args.repeats):
        # interleaved step by step: step k of every variant runs at nearly the same moment
        records = interleaved.run(args.steps)
        for variant in variants:
            record = records[variant]
            runs[variant].append(record)
            print(
                f"repeat {repeat + 1}/{args.repeats} {variant}: {record['seconds']:.2f} s for {args.steps} steps, "
                f"synthesis {sum(record['synthesis']):.2f} s, updates {record['updates']}",
                flush=True,
            )
    if interleaved is not None:
        interleaved.close()
    if reused:
        args.repeats, args.warmup = reused["settings"]["repeats"], reused["settings"].get("warmup", 0)
    summary = summarise(runs, args.steps, refresh, full_schedule, args.batch_size)
    if (args.whole_train if args.whole_train is not None else full_schedule) and args.repeats:
        whole = run_whole(variants, base_model, data, args.batch_size, args.steps, args.workdir, args.repeats)
        summary["_whole_train"] = summarise_whole(whole, summary)
    load_average["end"] = os.getloadavg()
    if args.synthesis_profile if args.synthesis_profile is not None else not full_schedule:
        forced = tuple(int(n) for n in args.profile_updates.split(","))
        summary["_synthesis"] = synthesis_profile(
            base_model, data, args.batch_size, summary, refresh, forced, args.profile_repeats
        )
        print(json.dumps(summary["_synthesis"], indent=1), flush=True)

    result = {
        "device": f"{device}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ""),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average,
        "settings": {k: v for k, v in vars(args).items() if k not in ("memory_worker", "output", "workdir")}
        | {"variants": variants, "refresh": refresh, "full_schedule_timed": full_schedule},
        "nullspace_arguments": NullspaceArguments().to_dict(),
        "summary": summary,
        "runs": runs,
    }
    output = args.output or os.path.join(
        RESULTS, "training_cost.json" if args.shape == "bundled" else f"training_cost_{args.shape}.json"
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)

    if reused:
        result["settings"]["reuse_runs"] = os.path.basename(args.reuse_runs)

    def save():  # after the timings, and again with the memory pass (a run cut short still leaves its timings)
        with open(output, "w") as f:
            json.dump(result, f, indent=2)

    save()
    memory = {}
    if reused and all("memory" in reused["summary"].get(v, {}) for v in variants):
        for variant in variants:
            if "memory" in reused["summary"].get(variant, {}):
                summary[variant]["memory"] = reused["summary"][variant]["memory"]
        save()
    elif args.memory:
        forwarded = [
            "--shape",
            args.shape,
            "--batch-size",
            str(args.batch_size),
            "--samples",
            str(args.samples),
            "--device",
            args.device,
            "--workdir",
            args.workdir,
        ] + (["--bf16"] if args.bf16 else [])
        forwarded += ["--threads", str(args.threads)] if args.threads else []
        forwarded += ["--noise-init-limit", str(args.noise_init_limit)] if args.noise_init_limit is not None else []
        for variant in variants:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-worker", variant, *forwarded],
                capture_output=True,
                text=True,
                check=True,
            )
            memory[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        key = "cuda" if device == "cuda" else "rss"
        reference = memory.get("plain_trainer")
        for variant, row in memory.items():
            row["training_mb"] = row[f"peak_{key}_mb"] - row[f"base_{key}_mb"]
            if reference:
                row["peak_ratio_to_plain_trainer"] = row[f"peak_{key}_mb"] / reference[f"peak_{key}_mb"]
                row["training_ratio_to_plain_trainer"] = row["training_mb"] / (
                    reference[f"peak_{key}_mb"] - reference[f"base_{key}_mb"]
                )
            summary[variant]["memory"] = row

        save()
    print(f"\nper step over a refresh period of {refresh} steps (medians of {args.repeats} interleaved repeats):")
    print(
        "| variant | s/step | x plain Trainer | x plain, steps without synthesis | synthesis share | updates/refresh "
        "| s/update | peak memory x plain |\n|---|---|---|---|---|---|---|---|"
    )
    for variant, row in summary.items():
        if variant.startswith("_"):
            continue
        mem = row.get("memory", {}).get("peak_ratio_to_plain_trainer")
        print(
            f"| {variant} | {row['seconds_per_step']:.4f} | {row['ratio_to_plain_trainer'] or float('nan'):.2f} | "
            f"{row['ratio_to_plain_trainer_without_synthesis'] or float('nan'):.2f} | "
            f"{100 * row['synthesis_share']:.1f}% | {row['updates_per_refresh_median']} | "
            f"{row['seconds_per_update'] or float('nan'):.3f} | {mem if mem is None else f'{mem:.2f}'} |"
        )
    if "_overheads" in summary:
        overheads = summary["_overheads"]
        print(
            f"\nper step, x plain Trainer: the Trainer's own overhead (plain Trainer - bare loop) "
            f"{overheads['plain_trainer_minus_bare_loop_x_plain']:+.3f}; nullspace - authors' loop "
            f"{overheads['nullspace_minus_authors_loop_x_plain']:+.3f} (steps without synthesis: "
            f"{overheads['without_synthesis']['plain_trainer_minus_bare_loop_x_plain']:+.3f} and "
            f"{overheads['without_synthesis']['nullspace_minus_authors_loop_x_plain']:+.3f})"
        )
    if "_whole_train" in summary:
        print(
            f"\ntrain() timed whole, as a user calls it (medians of {args.repeats} repeats), next to the step-"
            "interleaved ratio above:\n| variant | train() s | x plain Trainer, train() whole "
            "| x plain, its steps only | x plain, step-interleaved | train() around its steps, s |\n"
            "|---|---|---|---|---|---|"
        )
        for variant, row in summary["_whole_train"].items():
            print(
                f"| {variant} | {row['train_seconds']:.2f} | {row.get('ratio_to_plain_trainer', float('nan')):.2f} | "
                f"{row.get('ratio_to_plain_trainer_steps_only', float('nan')):.2f} | "
                f"{row['ratio_to_plain_trainer_step_interleaved'] or float('nan'):.2f} | "
                f"{row['around_steps_seconds']:.2f} |"
            )
    print(f"\nload average (1 min) at start and end: {load_average['start'][0]:.2f}, {load_average['end'][0]:.2f}")
    plot(result, os.path.splitext(output)[0] + ".png")
    print(f"\nWritten to {output} and {os.path.splitext(output)[0]}.png")


if __name__ == "__main__":
    main()
