"""Trainer: the CtP model and loss, pretraining, downstream protocols, and the datagen client."""
