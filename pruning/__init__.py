"""tierserve.pruning: structured pruning of transformer models (heads, FFN neurons, layers)."""
