"""The panel: the core that turns a signed context into a rendered panel and a session token, the page
handlers that call it, the error pages, and the WeCom secret the signer may need."""
