"""sobot-panel: dock your own business pages into Sobot (智齿客服) as signed, live iFrame panels.

The package's rooms:

- `panel`: the panel core (verify → look up → render → token) and the page handlers around it;
- `live`: the websocket, the hub of open panels and its Redis pub/sub fan-out;
- `audit`: the audit stream (producer, local spool, consumer-group reader, CLI);
- `ops`: the operations dashboard over that stream;
- `directory`: the enterprise's customer API behind a Redis cache;
- `protocol`: pure rules with no I/O (surfaces, signing, cards, tokens);
- `redis`: connecting, the embedded redis-server, key names.

Directory plugins import their types from here: `from sobot_panel import Customer, Directory`.
"""

from importlib.metadata import PackageNotFoundError, version

from .directory.models import Customer, Directory, Goods, Order, Product, Ticket, UpstreamError

try:
    __version__ = version("sobot-panel")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["Customer", "Directory", "Goods", "Order", "Product", "Ticket", "UpstreamError", "__version__"]
