"""Training: typed run configuration, the model, one Accelerate loop for pretraining and
fine-tuning (with its batches, validation and resume), and checkpoints that are complete or
absent."""
