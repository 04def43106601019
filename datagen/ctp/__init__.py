"""The CtP game: from a sample key to a plan (key frames, trajectories) and rendered clips with their boxes."""
