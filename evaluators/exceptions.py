"""Exceptions shared by every squeezefit package.

`UserError` is the one a user can cause (a bad path, bad YAML, an unknown device, an
impossible budget): its message is one clear sentence, and the CLI prints it to stderr
and exits with code 2 instead of showing a traceback. Anything else is a bug and raises.
"""


class UserError(Exception):
    """An input a user can fix; the message is one sentence that says what to change."""
