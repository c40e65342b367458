#!/usr/bin/env python
"""Score models on a robustness suite; the arguments of `hf-nullspace evaluate`. Runs under python, `accelerate
launch` and `torchrun`: with several processes each scores its share of every benchmark, and the first writes the
merged report (the same numbers as one process).

    python trainer_scripts/evaluate.py google/vit-base-patch16-224 --suite imagenet --path imagenet-v2=/data/v2 ...
    accelerate launch --num_processes 8 trainer_scripts/evaluate.py base/ finetuned/ --suite imagenet \\
        --cap attack=5000 --bf16 --path imagenet-v2=/data/v2 --path imagenet-sketch=/data/sketch
"""

import sys

from hf_nullspace.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
