"""The server step of each round: Flower's own strategies, each with medsilo's reply vetting.

``strategy`` picks one of Flower's ``FedAvg``, ``FedProx``, ``FedAvgM``, ``FedAdam``,
``FedYogi`` or ``FedAdagrad``, or a robust one (``server.robust``);
:class:`~server.strategy.MedsiloFedAvg` comes first in the method order, so every reply
is vetted and recorded before Flower's aggregation and its server optimiser run. The
optimiser's state (momentum, moments) is checkpointed with the global model, so
``resume-from`` continues it exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedProx, FedYogi
from flwr.serverapp.strategy.fedopt import FedOpt

from common.config import RunConfig
from common.experiment import model_spec
from common.models import build_from_spec
from common.robust import ROBUST_STRATEGIES
from server.robust import make_robust_strategy
from server.strategy import MedsiloFedAvg

__all__ = ["make_strategy", "server_state", "load_server_state"]


class MedsiloFedProx(MedsiloFedAvg, FedProx):
    """Flower's FedProx (weighted average; the hospitals add the proximal term), vetted."""


class MedsiloFedAvgM(MedsiloFedAvg, FedAvgM):
    """Flower's FedAvgM (server momentum), vetted."""


class MedsiloFedAdam(MedsiloFedAvg, FedAdam):
    """Flower's FedAdam, vetted."""


class MedsiloFedYogi(MedsiloFedAvg, FedYogi):
    """Flower's FedYogi, vetted."""


class MedsiloFedAdagrad(MedsiloFedAvg, FedAdagrad):
    """Flower's FedAdagrad, vetted."""


_FEDOPT = {"fedadam": MedsiloFedAdam, "fedyogi": MedsiloFedYogi, "fedadagrad": MedsiloFedAdagrad}


def make_strategy(cfg: RunConfig, **kwargs: Any) -> MedsiloFedAvg:
    """The plaintext strategy ``cfg.server_step`` with its server-step settings; ``kwargs`` go to every one.

    A server optimiser steps the model's parameters only; its buffers (BatchNorm's running
    statistics and counters) are averaged as FedAvg would.
    """
    step = cfg.server_step
    if step == "fedavg":
        return MedsiloFedAvg(**kwargs)
    if step == "fedprox":
        return MedsiloFedProx(proximal_mu=cfg.proximal_mu, **kwargs)
    if step in ROBUST_STRATEGIES:
        return make_robust_strategy(cfg, **kwargs)
    kwargs.setdefault("buffer_keys", frozenset(name for name, _ in build_from_spec(model_spec(cfg)).named_buffers()))
    if step == "fedavgm":
        return MedsiloFedAvgM(
            server_learning_rate=cfg.server_learning_rate, server_momentum=cfg.server_momentum, **kwargs
        )
    return _FEDOPT[step](eta=cfg.server_learning_rate, eta_l=cfg.learning_rate, **kwargs)


def server_state(strategy: MedsiloFedAvg) -> dict[str, np.ndarray]:
    """The server optimiser's state as flat named arrays (empty for a weighted average)."""
    state: dict[str, np.ndarray] = {}
    if isinstance(strategy, FedOpt):
        for prefix, moments in (("m_t/", strategy.m_t), ("v_t/", strategy.v_t)):
            state.update({prefix + k: np.require(v, requirements="C") for k, v in (moments or {}).items()})
    if isinstance(strategy, FedAvgM) and strategy.momentum_vector is not None:
        momentum = enumerate(strategy.momentum_vector)
        state.update({f"momentum/{i:05d}": np.require(v, requirements="C") for i, v in momentum})
    return state


def load_server_state(strategy: MedsiloFedAvg, state: dict[str, np.ndarray]) -> None:
    """Restore :func:`server_state`'s arrays into ``strategy`` (a resumed run).

    Raises:
        ValueError: the state belongs to another server step.
    """
    expected = {"m_t", "v_t"} if isinstance(strategy, FedOpt) else set()
    expected |= {"momentum"} if isinstance(strategy, FedAvgM) else set()
    kinds = {key.split("/", 1)[0] for key in state}
    if not kinds <= expected:
        raise ValueError(f"the checkpoint's server state holds {sorted(kinds)}; expected only {sorted(expected)}")
    if isinstance(strategy, FedOpt):
        strategy.m_t = {k.removeprefix("m_t/"): v for k, v in state.items() if k.startswith("m_t/")} or None
        strategy.v_t = {k.removeprefix("v_t/"): v for k, v in state.items() if k.startswith("v_t/")} or None
    if isinstance(strategy, FedAvgM):
        momentum = [state[k] for k in sorted(k for k in state if k.startswith("momentum/"))]
        strategy.momentum_vector = momentum or None
