"""The producer side: the Python client, job planning and the ``hfq`` command."""
