"""`python -m agentpost` runs the CLI."""

from agentpost.cli import main

main()
