"""Where and how training runs: ranks, devices and precision, checkpoints, run folders, signals, launch."""
