"""hf_nullspace: approximate nullspace augmented finetuning for Hugging Face vision transformers."""
