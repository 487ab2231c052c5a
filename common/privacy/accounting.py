"""DP accounting: pure functions plus one small persisted state, :class:`PrivacyLedger`.

The ledger is a history of ``(noise_multiplier, sample_rate, steps)`` entries, persisted as
JSON in the hospital's state directory, so epsilon never resets when a node restarts.
Every privacy-relevant argument is keyword-only, so no number lands in the wrong place.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

__all__ = [
    "LEDGER_MECHANISM",
    "PrivacyLedger",
    "default_delta",
    "fits_budget",
    "is_finite_number",
    "noise_multiplier_for",
    "poisson_schedule",
]

LEDGER_MECHANISM = "rdp"
_ENTRY_KEYS = ("noise_multiplier", "sample_rate", "steps")
# Opacus' default RDP orders plus the large orders Google's dp-accounting also searches:
# a tighter (still valid) epsilon when the privacy cost per order is tiny.
_ORDERS: tuple[float, ...] = (*RDPAccountant.DEFAULT_ALPHAS, 128, 256, 512, 1024)


def is_finite_number(value: object) -> bool:
    """True for a finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_entry(noise_multiplier: object, sample_rate: object, steps: object, where: str) -> tuple[float, float, int]:
    if not is_finite_number(noise_multiplier) or noise_multiplier <= 0:  # type: ignore[operator]
        raise ValueError(f"{where}noise_multiplier = {noise_multiplier!r} is invalid; expected a finite number > 0")
    if not is_finite_number(sample_rate) or not 0 < sample_rate <= 1:  # type: ignore[operator]
        raise ValueError(f"{where}sample_rate = {sample_rate!r} is invalid; expected a number in (0, 1]")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{where}steps = {steps!r} is invalid; expected an integer >= 1")
    return float(noise_multiplier), float(sample_rate), steps  # type: ignore[arg-type]


def _check_delta(delta: object) -> float:
    if not is_finite_number(delta) or not 0 < delta < 1:  # type: ignore[operator]
        raise ValueError(f"delta = {delta!r} is invalid; expected a number in (0, 1)")
    return float(delta)  # type: ignore[arg-type]


class PrivacyLedger:
    """The privacy spent so far: a history of ``(noise_multiplier, sample_rate, steps)``.

    Epsilon is computed from the history with Opacus' RDP accountant maths (subsampled
    Gaussian mechanism, composed over all steps). Consecutive entries with the same noise
    multiplier and sample rate are merged, as Opacus' ``RDPAccountant`` does. The state is
    small, checked on load, and saved atomically.

    Example:
        >>> ledger = PrivacyLedger.load(state_dir / "privacy.json")
        >>> ledger.record(noise_multiplier=1.1, sample_rate=0.01, steps=200)
        >>> ledger.save(state_dir / "privacy.json")
        >>> ledger.epsilon(1e-5)
    """

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []

    def __len__(self) -> int:
        return len(self.history)

    def __repr__(self) -> str:
        return f"PrivacyLedger(history={self.history!r})"

    @property
    def steps(self) -> int:
        """Total DP-SGD steps recorded."""
        return sum(entry[2] for entry in self.history)

    def record(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add ``steps`` Poisson-sampled DP-SGD steps with this noise multiplier and sample rate.

        Raises:
            ValueError: a value is out of range (noise <= 0, sample rate outside (0, 1], steps < 1).
        """
        sigma, q, k = _check_entry(noise_multiplier, sample_rate, steps, "")
        if self.history and self.history[-1][:2] == (sigma, q):
            self.history[-1] = (sigma, q, self.history[-1][2] + k)
        else:
            self.history.append((sigma, q, k))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 for an empty ledger).

        Raises:
            ValueError: ``delta`` is not in (0, 1).
        """
        delta = _check_delta(delta)
        if not self.history:
            return 0.0
        accountant = RDPAccountant()
        accountant.history = list(self.history)
        with warnings.catch_warnings():  # "optimal order is the largest alpha": informative only
            warnings.simplefilter("ignore", UserWarning)
            return float(accountant.get_epsilon(delta=delta, alphas=list(_ORDERS)))

    def copy(self) -> PrivacyLedger:
        """An independent copy (for "what if" projections)."""
        ledger = PrivacyLedger()
        ledger.history = list(self.history)
        return ledger

    def state_dict(self) -> dict[str, Any]:
        """The JSON-ready state: ``{"mechanism": "rdp", "history": [{noise_multiplier, sample_rate, steps}]}``."""
        return {
            "mechanism": LEDGER_MECHANISM,
            "history": [dict(zip(_ENTRY_KEYS, entry, strict=True)) for entry in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the history with ``state`` (as written by :meth:`state_dict`), after checking all of it.

        Raises:
            ValueError: one line naming the first bad field; the ledger is left unchanged.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"privacy ledger state is a {type(state).__name__}; expected a mapping")
        if set(state) != {"mechanism", "history"}:
            raise ValueError(f"privacy ledger state has keys {sorted(state)}; expected ['history', 'mechanism']")
        if state["mechanism"] != LEDGER_MECHANISM:
            raise ValueError(f"privacy ledger mechanism = {state['mechanism']!r} is unsupported; expected 'rdp'")
        raw = state["history"]
        if not isinstance(raw, list):
            raise ValueError(f"privacy ledger history is a {type(raw).__name__}; expected a list")
        history = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, Mapping) or set(entry) != set(_ENTRY_KEYS):
                raise ValueError(f"privacy ledger history[{i}] = {entry!r} is invalid; expected keys {_ENTRY_KEYS}")
            history.append(_check_entry(*(entry[k] for k in _ENTRY_KEYS), f"privacy ledger history[{i}]."))
        self.history = history

    def save(self, path: str | Path) -> Path:
        """Write the ledger as JSON, atomically (temp file in the same folder, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.state_dict(), fh, indent=2, allow_nan=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """The ledger saved at ``path``; an empty ledger when the file does not exist.

        Raises:
            ValueError: the file exists but is unreadable, not JSON or not a valid ledger
                (never silently reset: that would forget privacy already spent).
        """
        path = Path(path)
        ledger = cls()
        if not path.exists():
            return ledger
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            ledger.load_state_dict(state)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"privacy ledger {str(path)!r} is corrupt or invalid: {reason}") from None
        return ledger


def noise_multiplier_for(*, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier that makes the whole planned training end at epsilon <= ``target_epsilon``.

    ``steps`` is the total number of Poisson-sampled DP-SGD steps of the plan (all rounds ×
    local epochs × steps per epoch). Binary search with Opacus' RDP accountant, to within
    ``min(0.01, 0.5 % of target_epsilon)`` below the target.

    Raises:
        ValueError: an input is out of range, or the target needs a noise multiplier above 10⁶.
    """
    if not is_finite_number(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon = {target_epsilon!r} is invalid; expected a finite number > 0")
    delta = _check_delta(delta)
    _, q, k = _check_entry(1.0, sample_rate, steps, "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(
                get_noise_multiplier(
                    target_epsilon=float(target_epsilon),
                    target_delta=delta,
                    sample_rate=q,
                    steps=k,
                    accountant="rdp",
                    epsilon_tolerance=min(0.01, 0.005 * target_epsilon),
                    alphas=list(_ORDERS),
                )
            )
    except ValueError:
        raise ValueError(
            f"target_epsilon = {target_epsilon} is unreachable for {k} steps at sample rate {q:.4g}; "
            "expected a larger epsilon, fewer rounds or epochs, or a smaller batch"
        ) from None


def default_delta(n: int) -> float:
    """The default delta for a dataset of ``n`` examples: ``min(1e-5, 1 / (10 n))``.

    Always well below ``1/n`` (a delta near ``1/n`` allows releasing one example outright),
    and never looser than the customary ``1e-5``.

    Raises:
        ValueError: ``n < 1``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n = {n!r} is invalid; expected the number of training examples (>= 1)")
    return min(1e-5, 1.0 / (10 * n))


def fits_budget(
    ledger: PrivacyLedger,
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    target_epsilon: float,
) -> tuple[bool, float]:
    """Whether one more round of ``steps`` keeps the epsilon spent <= ``target_epsilon``.

    Used by a hospital to decline a round before training; ``ledger`` is not changed.

    Returns:
        ``(fits, projected_epsilon)``: the epsilon the ledger would show after that round.
    """
    if not is_finite_number(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon = {target_epsilon!r} is invalid; expected a finite number > 0")
    projected = ledger.copy()
    projected.record(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    epsilon = projected.epsilon(delta)
    return epsilon <= target_epsilon * (1 + 1e-9), epsilon


def poisson_schedule(
    *, num_examples: int, batch_size: int, epochs: float = 1, sample_rate: float = 0.0
) -> tuple[float, int]:
    """The sample rate and number of steps :func:`train_private` uses for ``epochs`` epochs.

    With ``sample_rate`` 0, as Opacus' ``DPDataLoader``: ``steps_per_epoch = ceil(num_examples /
    batch_size)`` and ``sample_rate = 1 / steps_per_epoch`` (each example is in each step with
    this probability). A ``sample_rate`` q in (0, 1] is taken as it is, with ``steps_per_epoch =
    max(1, round(1 / q))``: one pass over the examples in expectation. A fraction of an epoch is
    that share of the steps, at least one.

    Returns:
        ``(sample_rate, steps)`` with ``steps = max(1, round(epochs * steps_per_epoch))``.
    """
    for name, value in (("num_examples", num_examples), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} = {value!r} is invalid; expected an integer >= 1")
    if not is_finite_number(epochs) or epochs <= 0:
        raise ValueError(f"epochs = {epochs!r} is invalid; expected a finite number > 0")
    if not is_finite_number(sample_rate) or not 0 <= sample_rate <= 1:
        raise ValueError(f"sample_rate = {sample_rate!r} is invalid; expected a number in [0, 1] (0: from batch_size)")
    if sample_rate:
        return float(sample_rate), max(1, round(epochs * max(1, round(1 / sample_rate))))
    per_epoch = math.ceil(num_examples / batch_size)
    return 1.0 / per_epoch, max(1, round(epochs * per_epoch))
