#!/usr/bin/env python
"""Finetune an image classifier with approximate nullspace noise, evaluate its robustness, write its card, push it.

    accelerate launch trainer_scripts/run.py                      # the embedded offline default
    accelerate launch trainer_scripts/run.py --nullspace_mode random   # the embedded default, in random mode
    accelerate launch trainer_scripts/run.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name ILSVRC/imagenet-1k --streaming --max_steps 800 --output_dir vit-b-ns --push_to_hub
    python trainer_scripts/run.py config.yaml --learning_rate 1e-5   # a .json/.yaml file as the base, overridden

Arguments: ModelArguments and DataTrainingArguments (hf_nullspace/finetune.py), NullspaceArguments
(hf_nullspace/config.py) and transformers' TrainingArguments. Runs unchanged under python, accelerate launch and
torchrun. The embedded default is the base of the arguments only when no model and no dataset are named; see
docs/main_job.md (defaults and overrides, output folder rules) or `--help`.
"""

from hf_nullspace.finetune import main

if __name__ == "__main__":
    main()
