"""sims: studies of SCL with prototypes built on ncgeo. Each study writes a table, a figure and a
verdict checked against docs/theory.md.

Studies (one module each, ``run_NAME(out_dir, quick=False, workers=None, **options) ->
StudyResult`` and ``plot_NAME(rows, settings) -> Figure``): :mod:`sims.limit` (the
many-prototype limit = fixed-classifier CE), :mod:`sims.geometry_study` (prototype geometry
under imbalance, with and without ReLU), :mod:`sims.batching` (UFM+ and batching schemes),
:mod:`sims.temperature` (rate of the limit against tau), :mod:`sims.inverse` (designing
prototypes for a target Gram). :mod:`sims.registry` maps names to studies (``run_study``,
``run_all``); :mod:`sims.runner` is the parallel, resumable sweep runner; :mod:`sims.io` the
atomic writers; :mod:`sims.plotting` the shared figure style; :mod:`sims.study` the result
type and option specs; :mod:`sims.common` the certified optima shared by the studies.
"""
