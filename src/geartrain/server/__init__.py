"""The geartrain job server: Server, ServerConfig and the Broker under them."""

from .app import Server
from .broker import Broker
from .config import ServerConfig

__all__ = ["Broker", "Server", "ServerConfig"]
