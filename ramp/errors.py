"""The one exception type users see: its message is a single line naming the problem and the fix."""


class RampError(Exception):
    """A user-facing failure; the CLI prints `ramp: error: <message>` and exits with status 2."""
