"""The one exception type for mistakes a user can make and fix (bad input, missing data)."""


class UserError(Exception):
    """Bad input or a missing prerequisite. The message names the input and what to do.

    The command line prints it as one line and exits with status 2, never a traceback.
    """


def first_few(items: list[str], sep: str = ", ", n: int = 5) -> str:
    """The first ``n`` of ``items`` joined by ``sep``, and how many more: how an error names
    its offenders without printing thousands."""
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return sep.join(items[:n]) + more
