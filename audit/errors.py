"""Errors that mean "the user's input is wrong" (exit code 2), not a bug."""


class AuditInputError(ValueError):
    """Bad input: a malformed config, a missing file, an unusable dataset.

    The message names the problem (the key, the file, the value) and how to fix it.
    """
