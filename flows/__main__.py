"""`python -m flows` is the `kbitlaw` command."""

from flows.cli import main

main()
