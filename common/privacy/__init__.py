"""Differential privacy, independent of Flower: sample-level DP-SGD with Opacus and Poisson sampling.

- :mod:`common.privacy.compat`: the DP-compatible model every party builds (GroupNorm, no in-place ops).
- :mod:`common.privacy.accounting`: RDP accounting and the persisted :class:`~common.privacy.accounting.PrivacyLedger`.
- :mod:`common.privacy.dpsgd`: one round of DP-SGD (:func:`~common.privacy.dpsgd.train_private`).
- :mod:`common.privacy.clipping`: ghost and book-keeping per-example clipping for CNNs.
- :mod:`common.privacy.utility`: the privacy–utility comparison of finished runs.

Import from the submodule you need: Opacus is loaded only by the modules that use it.
"""
