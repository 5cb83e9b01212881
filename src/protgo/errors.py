"""The one exception type for mistakes a user can make and fix (bad input, missing data)."""


class UserError(Exception):
    """Bad input or a missing prerequisite. The message names the input and what to do.

    The command line prints it as one line and exits with status 2, never a traceback.
    """
