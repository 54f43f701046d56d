"""Redis, the service's only shared state: connecting (one server, Sentinel, Cluster), the embedded
redis-server, key names, and the set of exceptions that mean "Redis is away"."""

from .clients import REDIS_DOWN, RedisClient, as_text, connect, connect_any, pubsub_for
from .embedded import DataDirBusy, EmbeddedRedis, find_redis_server, stop_process
from .keys import Keys
from .pubsub import PubSubReader, Subscriptions
from .urls import keys_for, parse_redis_url

__all__ = [
    "REDIS_DOWN",
    "DataDirBusy",
    "EmbeddedRedis",
    "Keys",
    "PubSubReader",
    "RedisClient",
    "Subscriptions",
    "as_text",
    "connect",
    "connect_any",
    "find_redis_server",
    "keys_for",
    "parse_redis_url",
    "pubsub_for",
    "stop_process",
]
