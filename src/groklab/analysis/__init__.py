"""Analysis of saved runs: each module is a pure function of a loaded run.

Modules: ``fourier`` (Fourier toolkit), ``progress`` (measures over checkpoints), ``phases``
(training phases read off them), ``llc`` (local learning coefficient), ``planted`` (runs holding
hand-built Fourier circuits: known answers for the others). Import them directly, e.g.
``from groklab.analysis import fourier``.
"""
