"""The coordinator: consumer HTTP API, provider WebSocket hub, routing and storage."""
