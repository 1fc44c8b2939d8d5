"""Errors that the command lines turn into one clear line."""


class UserError(ValueError):
    """Something the user gave us is wrong.

    The message names the input, what was wrong and what is accepted; the
    CLIs print it alone (no traceback) and exit with code 2.
    """
