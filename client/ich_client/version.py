"""The client's version, sent in the User-Agent so that the service's logs show which clients call it."""

__version__ = "0.1.0"
