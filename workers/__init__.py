"""The worker process: RQ workers running the jobs in :mod:`workers.jobs`."""
