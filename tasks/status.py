"""The words every stage uses for the status of a computed answer (DESIGN.md: `status`)."""

OK = "ok"
NO_DATA = "insufficient data"  # too little data: the numbers are null, never invented
