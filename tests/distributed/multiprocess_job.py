"""Test-only launcher: runs the real job (`parse_args` + `build_trainer` + `trainer.train`, as
`trainer_scripts/run.py` does) under `accelerate launch` / `torchrun`, then makes every rank write its own state.

    accelerate launch --multi_gpu --num_processes 2 ... tests/distributed/multiprocess_job.py <job args> --use_cpu True

After training, rank `i` writes to the output folder:

- `rank_<i>.safetensors`: every parameter of the unwrapped model (`param.<name>`) and the noise bank (`noise.<k>`).
- `rank_<i>.json`: rank, world size, global step, the noise history (updates and statistic per refresh), a digest of
  every noise taken right after its refresh, and `batches`: per training step the example ids this rank trained on.

Example ids are read back from the pixels that reach `training_step` (the real data path: loading, decoding,
transform, collate, dispatch or sharding): the test data carries the id of row `k` in pixel (0, 0) as
`(k % 256, k // 256, 255)`. The id is exact when the train transform keeps the image as is
(`--train_crop_scale_min 1 --train_flip false` on images of the model's size); otherwise ids are meaningless.
"""

import hashlib
import json
import logging
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import set_seed

from hf_nullspace.finetune import build_trainer, parse_args
from hf_nullspace.trainer import last_complete_checkpoint


def example_ids(pixel_values: torch.Tensor, mean, std) -> list[int]:
    """Decodes the id that the test data writes into pixel (0, 0) of every image."""
    pixel = pixel_values[:, :, 0, 0].detach().float().cpu()
    if mean is not None:
        pixel = pixel * torch.tensor(std, dtype=torch.float32) + torch.tensor(mean, dtype=torch.float32)
    values = (pixel * 255).round().long()
    return [int(r) + 256 * int(g) if int(b) == 255 else -1 for r, g, b in values.tolist()]


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().float().numpy().tobytes()).hexdigest()


def main(argv=None):
    model_args, data_args, nullspace_args, training_args, adversarial_args, lora_args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)
    trainer, _ = build_trainer(model_args, data_args, nullspace_args, training_args, adversarial_args, lora_args)

    processor = trainer.processing_class
    do_normalize = getattr(processor, "do_normalize", False)
    mean = processor.image_mean if do_normalize else None
    std = processor.image_std if do_normalize else None

    batches, refresh_digests = [], []
    training_step, refresh_noise = trainer.training_step, trainer.refresh_noise

    def recording_training_step(model, inputs, num_items_in_batch=None):
        batches.append({"step": trainer.state.global_step, "ids": example_ids(inputs["pixel_values"], mean, std)})
        return training_step(model, inputs, num_items_in_batch)

    def recording_refresh_noise(model, inputs):
        record = refresh_noise(model, inputs)
        refresh_digests.append(digest(trainer.noise))
        return record

    trainer.training_step = recording_training_step
    trainer.refresh_noise = recording_refresh_noise

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None:
        checkpoint = last_complete_checkpoint(training_args.output_dir)
    trainer.train(resume_from_checkpoint=checkpoint)

    rank, world_size = training_args.process_index, training_args.world_size
    model = trainer.accelerator.unwrap_model(trainer.model)
    tensors = {f"param.{name}": p.detach().cpu().contiguous().clone() for name, p in model.named_parameters()}
    noises = trainer.noise_bank.noises
    tensors.update({f"noise.{k:04d}": noise.detach().cpu().contiguous() for k, noise in enumerate(noises)})
    os.makedirs(training_args.output_dir, exist_ok=True)
    save_file(tensors, os.path.join(training_args.output_dir, f"rank_{rank}.safetensors"))
    state = {
        "rank": rank,
        "world_size": world_size,
        "num_processes": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "history": trainer.noise_history,
        "refresh_digests": refresh_digests,
        "batches": batches,
        "log_history": trainer.state.log_history,
    }
    with open(os.path.join(training_args.output_dir, f"rank_{rank}.json"), "w") as f:
        json.dump(state, f, indent=2)

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
