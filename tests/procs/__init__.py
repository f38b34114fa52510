"""Helper scripts and a harness for the multi-process tests (stores, gates, sinks)."""
