"""The HTTP API (``hfq api``): jobs, and OpenAI-compatible files and batches, behind bearer API keys."""
