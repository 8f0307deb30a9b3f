"""`python -m kbitlaw` is the `kbitlaw` command."""

from kbitlaw.flows.cli import main

if __name__ == "__main__":  # training workers are spawned: they import this module, never run it
    main()
