"""Low-level helpers shared by models, datasets and the entry scripts (imports nothing above it)."""
