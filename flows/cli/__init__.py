"""The `kbitlaw` command line. One module per group of commands, in the order `--help` lists them:
commands.py (demo, nightly, evaluate, fit, predict, report, checkpoints), datasets.py (`datasets
clean|validate`), deploy.py (`serve`, `emit-checkpoint`, `serve-reports`), api.py (`api
status|start|stop`); common.py has what they share. `--json` prints one JSON document on stdout
and nothing else there; logs go to stderr (`demo`'s, with all library output, to a log file it
names once).
"""

from __future__ import annotations

import os

from kbitlaw.flows.cli import api, commands, datasets, deploy  # noqa: F401  (they register their commands)
from kbitlaw.flows.cli.common import app


def main() -> None:
    # The local Prefect API would try to send telemetry and log an ERROR with no network.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    app()


if __name__ == "__main__":
    main()
