"""The repository format: manifests, packs, index, version records (docs/FORMAT.md)."""
