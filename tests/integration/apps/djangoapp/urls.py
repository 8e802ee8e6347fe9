from django.urls import path

from djangoapp import views

urlpatterns = [
    path("", views.index),
    path("form", views.form),
    path("upload", views.upload),
    path("redirect", views.go),
    path("target", views.target),
    path("set-cookie", views.set_cookie),
    path("read-cookie", views.read_cookie),
    path("stream", views.stream),
    path("file", views.file),
]
