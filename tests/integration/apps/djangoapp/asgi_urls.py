from django.urls import path

from djangoapp import async_views
from djangoapp.urls import urlpatterns as wsgi_urlpatterns

urlpatterns = [
    *wsgi_urlpatterns,
    path("async", async_views.index),
    path("async/items/<int:item_id>", async_views.item),
    path("async/json", async_views.json_echo),
    path("async/stream", async_views.stream),
    path("async/sleep", async_views.sleep),
]
