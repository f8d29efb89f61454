"""The result cache: outputs of rows run before, kept on disk and found again by a hash of everything that decides them.

- :mod:`hfqueue.cache.keys`: a job's fingerprint (task, model and resolved revision, adapter, options, precision,
  engine, output root, output-schema version) and each row's key under it.
- :mod:`hfqueue.cache.versions`: what a model resolves to without loading it: a Hub commit, a local folder's
  content hash.
- :mod:`hfqueue.cache.store`: :class:`~hfqueue.cache.store.ResultCache`, the store itself (an SQLite index over
  content-addressed Arrow packs), with its bound, statistics and pruning.

Workers use it through :mod:`hfqueue.worker.reuse`; ``hfq cache`` reads and prunes it.
"""
