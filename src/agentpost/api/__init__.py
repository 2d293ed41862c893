"""HTTP API (FastAPI): one router per resource; errors become JSON in one place."""
