"""The CtP network: encoders, the trajectory head, and the loss."""
