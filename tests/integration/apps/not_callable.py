"""APP points at something that is not an application."""

app = "I am a string, not a WSGI callable"
