import os

# asgi_settings: the WSGI project's settings, plus async views (asgi_urls.py).
os.environ["DJANGO_SETTINGS_MODULE"] = "djangoapp.asgi_settings"

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
