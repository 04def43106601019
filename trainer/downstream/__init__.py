"""Downstream evaluation of pretrained encoders: fine-tuning, 10-clip evaluation and VCOP retrieval."""
