"""The probes: scikit-learn-style estimators and the engines that fit them.

``estimators`` (linear, MLP and mass-mean probes, trained many at a time), ``adam`` (the stacked
Adam engine of the MLPs), ``lbfgs`` (lockstep L-BFGS of the linear probes), ``ttpd`` and ``ccs``
(the TTPD and CCS probes), and ``numerics`` (input checks, standardising and the few-column
logistic regression they share).
"""
