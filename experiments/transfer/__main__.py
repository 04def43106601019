"""`python -m experiments.transfer`: the experiment (experiments/transfer/experiment.py, docs/transfer.md)."""

from experiments.transfer.experiment import main

main()
