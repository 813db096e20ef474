"""One exception type for problems the user can fix (bad input, missing data or weights).

The CLI turns it into one line on stderr and exit code 2; everything else is a bug and keeps its traceback.
It subclasses ValueError so that callers of the Python API can catch the familiar type.
"""


class DskdError(ValueError):
    """A problem with the user's input, data or environment, stated in one line with what to do."""


def os_problem(exc: OSError) -> str:
    """A file the system refused (a folder that does not exist, no permission, a full disk), said in one line."""
    return f"could not use {exc.filename} ({exc.strerror or exc}); check that its folder exists and that you may " \
           "write there"
