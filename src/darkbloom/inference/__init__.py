"""Model-facing logic both sides share: catalog, request parsing, prompts, response formats."""
