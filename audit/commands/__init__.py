"""Subcommands of the ``splitaudit`` CLI (one module each)."""
