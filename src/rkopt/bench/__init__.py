"""rkopt's benchmark harness: is a Runge–Kutta optimizer better than Adam on my problem, at what cost?

Modules: :mod:`~rkopt.bench.workloads` (registry: data + model + loss + metric),
:mod:`~rkopt.bench.optimizers` (presets, tableaux, torch baselines), :mod:`~rkopt.bench.runner`
(one run, on the torch or the JAX backend: :mod:`~rkopt.bench.backends`, whose
:mod:`~rkopt.bench.jax_backend` is imported only when selected), :mod:`~rkopt.bench.records` (atomic
results on disk), :mod:`~rkopt.bench.sweep` (grids and studies in worker processes or Ray tasks,
resumable, lr grids extended past edge winners),
:mod:`~rkopt.bench.analysis` and :mod:`~rkopt.bench.report` (lr selection, robustness, performance
profiles, tables, figures, the README table). The command line is :mod:`rkopt.cli`; ``docs/harness.md``
and ``docs/cluster.md`` describe them. The harness imports the library, never the reverse.
"""
