"""App factories for --factory."""

from hello import app as hello_app


def create_app():
    return hello_app


def failing_factory():
    raise ValueError("factory could not read its settings")


def returns_not_callable():
    return 42


not_a_factory = 42
