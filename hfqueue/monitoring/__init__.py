"""What operators see: worker hooks and Prometheus metrics, worker presence for ``hfq workers``, and Flower."""
