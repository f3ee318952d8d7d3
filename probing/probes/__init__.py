"""The probes: scikit-learn-style estimators (linear, MLPs, mass-mean, TTPD, CCS) and the engines that fit them."""
