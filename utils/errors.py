"""Error types that the entry scripts turn into one clear line (no traceback)."""


class UserError(Exception):
    """A problem with what the user gave us (a file, a config, an argument).

    Entry scripts catch it, print ``error: <message>`` and exit with status 2.
    """


class SpecError(UserError, ValueError):
    """A model/dataset spec names an unknown component or passes an unknown argument."""


class CheckpointError(UserError):
    """A file is not a usable checkpoint (unreadable, unsafe, wrong layout or architecture)."""
