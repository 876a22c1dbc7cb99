"""`python -m syncengine` runs the CLI."""

from syncengine.cli.main import main

main()
