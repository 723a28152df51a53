"""rkopt's benchmark harness: is a Runge–Kutta optimizer better than Adam on my problem, at what cost?

Modules: :mod:`~rkopt.bench.workloads` (registry: data + model + loss + metric),
:mod:`~rkopt.bench.optimizers` (presets, tableaux, torch baselines), :mod:`~rkopt.bench.runner`
(one run), :mod:`~rkopt.bench.records` (atomic results on disk), :mod:`~rkopt.bench.sweep` (grids in
worker processes, resumable), :mod:`~rkopt.bench.analysis` and :mod:`~rkopt.bench.report` (lr
selection, tables, figures). The command line is :mod:`rkopt.cli`. The harness imports the library,
never the reverse.
"""
