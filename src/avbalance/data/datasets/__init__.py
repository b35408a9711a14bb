"""The datasets, one module each: a :func:`~avbalance.data.registry.register_dataset` class that
says how ``avbalance prepare`` reads the raw layout and how training loads the cache. The registry
imports every module of this package on its first look-up; ``cached`` and ``layout`` hold what
the datasets share."""
