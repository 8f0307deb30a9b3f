"""`python -m flows` is the `kbitlaw` command."""

from flows.cli import main

if __name__ == "__main__":  # training workers are spawned: they import this module, never run it
    main()
