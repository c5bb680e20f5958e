"""The errors a user can cause with data and fix: missing files, files that break their
format, undecodable images, and names or options that do not exist."""

from __future__ import annotations

from vgg.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset's files or one of its splits are missing; the message says where we looked
    and what to do."""


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used as asked: an unknown name, split or option, or files
    that break their format (a bad header, a truncated batch, an ImageFolder class that
    train/ lacks). The message names the file or the valid choices."""


class UnreadableImageError(UserError, OSError):
    """An image file could not be decoded (raised with ``--on_corrupt error``)."""

    def __init__(self, message: str):
        # An error in a DataLoader worker reaches the main process re-raised as
        # type(error)("Caught ... in DataLoader worker process N.\nOriginal Traceback ...
        # <module>.UnreadableImageError: <message>"): keep the one paragraph the user needs.
        if message.startswith("Caught ") and "Original Traceback" in message:
            message = message.rstrip().rpartition(f"{type(self).__name__}: ")[2]
        super().__init__(message)
