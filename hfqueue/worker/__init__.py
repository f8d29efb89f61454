"""The worker side: Celery app, chunk task, resident models, batching."""
