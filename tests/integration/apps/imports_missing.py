"""The module exists, but one of its own imports does not."""

import fulmen_test_no_such_dependency  # noqa: F401


def app(environ, start_response):
    raise AssertionError("never imported")
