"""The WSGI project's settings, with the URLconf that adds async views (served through ASGI)."""

from djangoapp.settings import *  # noqa: F401,F403

ROOT_URLCONF = "djangoapp.asgi_urls"
