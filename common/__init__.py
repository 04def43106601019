"""What both sides use, below datagen and trainer: atomic writes, tables, JSON logs, typed YAML configs, the
CTP_* environment, and the training presets."""
