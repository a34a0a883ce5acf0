"""The exit codes that lowcomm's processes share: the command line and the workers it launches."""

USAGE_ERROR = 2
"""Bad input, refused with one line on stderr before any work."""
