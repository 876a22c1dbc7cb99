"""The `syncengine` command line."""
