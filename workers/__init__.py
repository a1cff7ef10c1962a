"""The worker process: RQ workers (:mod:`workers.worker`) handing a :class:`~workers.context.WorkerContext`
to the jobs in :mod:`workers.training`, :mod:`workers.scoring` and :mod:`workers.lifecycle`."""
