"""The one exception type a user sees: a clear, one-line reason why SPA cannot go on."""


class SpaError(Exception):
    """Bad input or an impossible request. The command line prints it as one line and exits 2."""
