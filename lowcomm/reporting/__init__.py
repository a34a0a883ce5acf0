"""What a run reports: ``metrics.jsonl`` and the progress bar, records read back from it, the
run's outputs (loss plot, samples, tokenizer) and the plots."""
