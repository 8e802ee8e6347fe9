"""A module with a bug at import time: the user must see this traceback."""

raise RuntimeError("boom while importing raises_on_import")

app = None
