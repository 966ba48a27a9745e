"""HTTP and WebSocket routes; errors.py renders every failure."""
