"""Training: typed run configuration, the model, one Accelerate loop for pretraining and
fine-tuning, and checkpoints that are complete or absent."""
