"""The root of megamid's expected errors: bad input (config, data, checkpoint, command line).

The CLI prints any MegamidError as one line and exits 2; every other exception is a bug and keeps its
traceback. The lowest layer of the package: it imports nothing.
"""


class MegamidError(Exception):
    """An expected failure caused by the user's input; the message names what is wrong and what is valid."""

