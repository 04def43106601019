"""Pretraining: the loop, its sample sources, the epoch cursor, and what a run reports."""
