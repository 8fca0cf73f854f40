"""FastAPI gateway of the ICH service: settings, routes, schemas, errors, metrics and the engines.

The application is built by :func:`api.app.create_app`; nothing is created at import time so that tests and
``ich-serve`` each get their own settings, engine and metrics registry.
"""

__all__: list[str] = []
