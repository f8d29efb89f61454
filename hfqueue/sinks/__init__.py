"""Where results go: local Parquet parts and a manifest (``local``); the Hub comes later."""
