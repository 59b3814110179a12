"""The HTTP API: the app, access by role, routes per concern and errors mapped to answers."""
