"""The words every stage uses for the status of a computed answer (DESIGN.md: `status`).

Every law entry of the fit document has one of these and a `reason` in words. Only `ok` entries
are usable: drawn as curves, used in predictions, claims and the headline. The others keep their
numbers for inspection."""

OK = "ok"  # passed every gate of its law (law/gates.py): usable for prediction
NO_DATA = "insufficient data"  # too little data: the numbers are null, never invented
UNIDENTIFIED = "unidentified"  # fitted, but the data cannot determine some parameters (named)
FAILED = "failed"  # did not converge, diverged, or broke a gate that is not about identification
NOT_TESTABLE = "not testable"  # the grid or data lack what the law or check is about
STATUSES = (OK, UNIDENTIFIED, FAILED, NO_DATA, NOT_TESTABLE)
