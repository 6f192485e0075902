"""tierserve: prune transformer models, gate them on your data, serve full and pruned tiers."""

__version__ = "0.1.0"
__all__ = ["__version__"]
