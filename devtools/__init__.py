"""Developer tools (test broker, helpers); not part of the installed package."""
