"""The HTTP side of geard: metrics, health, the JSON API, gearmand's HTTP job submission and the dashboard.

It runs on the server's own event loop (aiohttp), reads the broker's state and counters, and submits and
cancels through the broker's own paths; the broker knows nothing of it. See service.HttpService.
"""

from .service import HttpService

__all__ = ["HttpService"]
