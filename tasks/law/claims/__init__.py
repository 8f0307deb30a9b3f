"""The papers' checkable claims put to the data, each with a verdict."""
