"""One exception type for problems the user can fix (bad input, missing data or weights).

The CLI turns it into one line on stderr and exit code 2; everything else is a bug and keeps its traceback.
It subclasses ValueError so that callers of the Python API can catch the familiar type.
"""


class DskdError(ValueError):
    """A problem with the user's input, data or environment, stated in one line with what to do."""
