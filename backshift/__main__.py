"""`python -m backshift` runs the command line."""

from .cli import main

main()
