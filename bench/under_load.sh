#!/usr/bin/env bash
# Run a command with two CPU-bound processes beside it (as many as the CI machine's cores), the way
# a shared machine runs CI: `bash bench/under_load.sh make test`. Prints the command's wall time and
# exits with its status; the hogs stop with it, whatever happens.
set -uo pipefail
HOGS=${HOGS:-2}
pids=()
for _ in $(seq "$HOGS"); do
  python3 -c "while True: pass" &
  pids+=("$!")
done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT INT TERM
started=$(date +%s)
"$@"
status=$?
echo "under load ($HOGS CPU hogs): '$*' exited $status after $(( $(date +%s) - started )) s" >&2
exit "$status"
