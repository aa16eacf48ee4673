"""Exceptions a user can act on. Each carries one clear sentence; the CLI prints it as one line."""


class UserError(Exception):
    """Base class: bad input from the user (a file, a flag, a checkpoint). Not a bug."""


class ImageReadError(UserError):
    """An image file that cannot be read: missing, empty, truncated, not an image, or too large."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded: wrong kind, wrong shapes, or unsafe content."""


class DatasetError(UserError):
    """A dataset or annotation file that is broken or inconsistent (names the file and the value)."""
