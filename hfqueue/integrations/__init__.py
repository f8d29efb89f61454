"""Integrations of hfqueue with other libraries (optional extras): :mod:`hfqueue.integrations.langchain`."""
