"""The console: pages for the people who approve, operate and audit, under /ui/ on the API's port.

Served by the daemon with the same tokens and roles as the API; everything it needs (templates,
the stylesheet) ships in the package, so it works on a machine without internet.
"""
