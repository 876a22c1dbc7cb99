"""The checkpoint watch daemon (`syncengine watch`, `syncengine.Watcher`): docs/WATCH.md."""

from syncengine.watch.watcher import CheckpointChanged, Watcher, WatchEvent

__all__ = ["CheckpointChanged", "WatchEvent", "Watcher"]
