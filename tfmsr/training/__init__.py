"""Training: the local trainer, evaluation and callbacks."""
