"""Training: the pure train step, losses, optimizers, the device mesh, checkpoints, metrics,
held-out evaluation, and the loop that runs them (`loop.train_and_evaluate`)."""
