"""Training: one loop (Trainer) for any objective, run directories, DDP, the pretrain command."""
