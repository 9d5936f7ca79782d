"""Errors that flightgen reports to a person.

The CLI prints an :class:`FlightgenError` as one line (``flightgen: error: ...``) and exits with
status 2, without a traceback. Anything else escaping a command is a bug in flightgen.
"""


class FlightgenError(Exception):
    """A problem with the user's input or environment, worded for the user."""
