"""Live panels: the `/ws` websocket, its typed frames, and the hub that pushes re-rendered panels when
Sobot switches customers or the enterprise invalidates one."""
