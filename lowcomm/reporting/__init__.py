"""What a run reports: ``metrics.jsonl`` and the progress bar, rank 0's reporter that writes them,
records read back from the file, the run's outputs (loss plot, samples, tokenizer) and the plots."""
