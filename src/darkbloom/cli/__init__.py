"""The darkbloom command line (Typer)."""
