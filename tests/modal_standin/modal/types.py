"""The stand-in's `modal.types`: the shapes `Volume.listdir` returns, as in modal 1.6.4."""

import enum
from dataclasses import dataclass


class FileEntryType(enum.IntEnum):
    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    FIFO = 4
    SOCKET = 5


@dataclass(frozen=True)
class FileEntry:
    """A file or directory listed from a volume (path relative to its root, no leading /)."""

    path: str
    type: FileEntryType
    mtime: int
    size: int
