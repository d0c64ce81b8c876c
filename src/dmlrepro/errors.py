"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class DmlReproError(Exception):
    """An error caused by the user's input (config, data, paths) with a message saying how to fix it."""
