"""The HTTP API (litestar + uvicorn) over `flywall.core.commands`."""
