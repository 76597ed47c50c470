"""The job service: a durable job ledger and priority queue, then the Ray Serve app on top of it."""
