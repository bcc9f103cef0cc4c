"""Fine-tuning: the trainer, its feature cache, the run-folder format and background jobs."""
