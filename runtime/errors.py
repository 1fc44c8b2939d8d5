"""Errors that the command lines turn into one clear line."""

import argparse


class UserError(ValueError):
    """Something the user gave us is wrong.

    The message names the input, what was wrong and what is accepted; the
    CLIs print it alone (no traceback) and exit with code 2.
    """


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
