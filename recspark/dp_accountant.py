"""The privacy accounting of user-level DP-SGD (``train.privacy``), with Google's ``dp-accounting``.

What is accounted is exactly what :mod:`recspark.models.dp_sgd` does: at every global step each
training user is included independently with probability ``q`` (Poisson sampling), each included
user contributes one gradient clipped to L2 norm ``C`` (the mean over up to ``examples_per_user``
of that user's rows), and Gaussian noise of standard deviation ``noise_multiplier * C`` is added
once to the sum. One step is therefore the Poisson-subsampled Gaussian mechanism with noise
multiplier sigma = noise_multiplier (sensitivity C under add/remove-one-user), and a run of T steps
is its T-fold composition: ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)``.

The driver makes a :class:`DPPlan` before training (this module imports no TensorFlow): the noise is
derived from a target epsilon for the planned steps, or given; after training :func:`spent` reports
the epsilon of the steps actually taken (early stopping takes fewer).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import secrets
from typing import Any, Optional

from recspark.config import DPConfig

# Poisson sampling of users at rate q, one clipped gradient per sampled user: the unit of privacy is a user.
SAMPLING = "poisson"
UNIT = "user"


def dp_event(sampling_rate: float, noise_multiplier: float, steps: int) -> Any:
    """The dp-accounting event of ``steps`` DP-SGD steps: Poisson sampling at ``sampling_rate``,
    Gaussian noise ``noise_multiplier`` x the clipping norm (the sensitivity)."""
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)


def _accountant(kind: str) -> Any:
    """A fresh accountant: RDP (its default orders) or PLD (add/remove one user, the default relation)."""
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    if kind == "rdp":
        return RdpAccountant()
    if kind == "pld":
        return PLDAccountant()
    raise ValueError(f"accountant must be 'rdp' or 'pld', got {kind!r}")


@contextlib.contextmanager
def _quiet_accountant():
    """dp-accounting's RDP accountant logs an absl warning for every order whose series does not
    converge (the calibration's search tries tiny noise): that order is left out and the bound stays
    valid, so the dozens of lines say nothing to a user. Errors still show."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def epsilon(sampling_rate: float, noise_multiplier: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """The epsilon (at ``delta``) spent by ``steps`` steps; 0 for no step."""
    if steps <= 0:
        return 0.0
    with _quiet_accountant():
        return float(_accountant(accountant).compose(dp_event(sampling_rate, noise_multiplier, steps)).get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sampling_rate: float, steps: int, delta: float,
                      accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose ``steps`` steps spend at most ``target_epsilon`` at
    ``delta`` (dp-accounting's calibration, which never returns a value over the budget)."""
    import dp_accounting

    with _quiet_accountant():
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant), lambda sigma: dp_event(sampling_rate, sigma, steps),
            target_epsilon, delta, bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4))


@dataclasses.dataclass(frozen=True)
class DPPlan:
    """Everything the ranks need to run DP-SGD and the driver needs to account for it (picklable)."""

    noise_multiplier: float
    clip_norm: float
    sampling_rate: float  # q: each user's probability of being in a step
    num_users: int
    steps_per_epoch: int  # ceil(1 / q): an epoch sees every user once in expectation
    planned_steps: int
    delta: float
    examples_per_user: int
    accountant: str
    target_epsilon: Optional[float] = None
    # Seeds each step's user sample, the same on every rank. Drawn from the OS for every run and never
    # stored, shown or logged (repr=False; not in report()): with a known seed (train.seed is in
    # MLflow) anyone could tell which users each step used, and the accountant's amplification by
    # sampling assumes they cannot. The noise has its own unseeded generator (recspark.models.dp_sgd).
    sampling_seed: int = dataclasses.field(default_factory=lambda: secrets.randbits(63), repr=False)

    @property
    def expected_users(self) -> float:
        """q x users: the expected number of users per step, the fixed denominator of the noisy mean
        (dividing by the actual count would make the step depend on it without noise)."""
        return self.sampling_rate * self.num_users

    def report(self, steps: int) -> dict:
        """The spent budget after ``steps`` steps, as model_meta.json, MLflow and the report show it."""
        return {
            "epsilon": round(epsilon(self.sampling_rate, self.noise_multiplier, steps, self.delta, self.accountant), 4),
            "delta": self.delta,
            "noise_multiplier": round(self.noise_multiplier, 6),
            "clip_norm": self.clip_norm,
            "sampling_rate": self.sampling_rate,
            "steps": steps,
            "num_users": self.num_users,
            "expected_users_per_step": round(self.expected_users, 3),
            "examples_per_user": self.examples_per_user,
            "target_epsilon": self.target_epsilon,
            "accountant": self.accountant,
            "sampling": SAMPLING,
            "unit": UNIT,
        }


def plan(settings: DPConfig, *, num_users: int, users_per_step: int, epochs: int) -> DPPlan:
    """The plan of a run over ``num_users`` users, ``users_per_step`` expected per step (the global
    batch: batch_size x num_proc) for ``epochs`` epochs; the noise derived from
    ``settings.target_epsilon`` or taken from ``settings.noise_multiplier``."""
    if num_users < 1:
        raise ValueError("differentially private training needs at least one user")
    sampling_rate = min(1.0, users_per_step / num_users)
    steps_per_epoch = math.ceil(1.0 / sampling_rate)
    planned_steps = steps_per_epoch * epochs
    delta = settings.delta if settings.delta is not None else 1.0 / num_users
    if settings.noise_multiplier is not None:
        noise = settings.noise_multiplier
    else:
        noise = noise_for_epsilon(settings.target_epsilon, sampling_rate, planned_steps, delta, settings.accountant)
    return DPPlan(noise_multiplier=noise, clip_norm=settings.clip_norm, sampling_rate=sampling_rate,
                  num_users=num_users, steps_per_epoch=steps_per_epoch, planned_steps=planned_steps, delta=delta,
                  examples_per_user=settings.examples_per_user, accountant=settings.accountant,
                  target_epsilon=settings.target_epsilon)
