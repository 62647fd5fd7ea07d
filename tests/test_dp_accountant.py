"""train.privacy without TensorFlow: the accountant against published values, the noise derived from
a target epsilon, the plan's sampling, the configuration checks and the MLflow / report records."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from recspark import dp_accountant
from recspark.config import Config, ConfigError, DPConfig, load_config
from recspark.tracking import flatten_params

# TensorFlow Privacy's MNIST DP-SGD tutorial (tensorflow/privacy, tutorials/README.md, "Select
# Parameters"): 60,000 examples, batches of 256 (q = 256 / 60000), epsilon at delta = 1e-5 by its RDP
# accountant, whose conversion is eps = min over orders of rdp - log(delta) / (order - 1), over the
# orders 1.1 .. 10.9 and 12 .. 63. (noise multiplier, epochs) -> published epsilon.
TF_PRIVACY_MNIST = {(1.12, 60): 2.92, (1.2, 10): 1.20}
TF_PRIVACY_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def test_rdp_of_the_sampled_gaussian_matches_dp_accountings_published_vector():
    """dp-accounting's own reference values (dp_accounting/rdp/rdp_privacy_accountant_test.py,
    test_compute_rdp_poisson_sampled_gaussian: q = 0.01, noise 2.5, 50 steps), for the event this
    project builds for DP-SGD."""
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    accountant = RdpAccountant(orders=[1.5, 2.5, 5, 50, 100, np.inf])
    accountant.compose(dp_accountant.dp_event(0.01, 2.5, 50))
    np.testing.assert_allclose(accountant._rdp, [6.70579741e-04, 1.08548710e-03, 2.18075656e-03,
                                                 2.38460375e-02, 1.67416308e02, np.inf], rtol=1e-4)


@pytest.mark.parametrize("noise, epochs", list(TF_PRIVACY_MNIST))
def test_epsilon_matches_tensorflow_privacy_mnist_table(noise, epochs):
    """The same RDP, converted the way TF Privacy did, gives the published epsilon to two decimals;
    what recspark reports (dp-accounting's tighter conversion) is never more."""
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    q, steps, delta = 256 / 60000, epochs * 60000 // 256, 1e-5
    accountant = RdpAccountant(orders=TF_PRIVACY_ORDERS)
    accountant.compose(dp_accountant.dp_event(q, noise, steps))
    orders, rdp = np.array(TF_PRIVACY_ORDERS), np.array(accountant._rdp)
    classic = float(np.min(rdp - math.log(delta) / (orders - 1)))
    assert round(classic, 2) == TF_PRIVACY_MNIST[(noise, epochs)]
    reported = dp_accountant.epsilon(q, noise, steps, delta)
    assert 0.7 * classic < reported <= classic
    # PLD accounting is tighter still, and of the same magnitude.
    assert 0.5 * reported < dp_accountant.epsilon(q, noise, steps, delta, "pld") <= reported * 1.01


def test_noise_for_epsilon_spends_at_most_the_target():
    q, steps, delta = 0.02, 500, 1e-4
    for target in (1.0, 4.0, 8.0):
        sigma = dp_accountant.noise_for_epsilon(target, q, steps, delta)
        spent = dp_accountant.epsilon(q, sigma, steps, delta)
        assert spent <= target and spent > 0.99 * target, (target, sigma, spent)
    # More budget, less noise.
    sigmas = [dp_accountant.noise_for_epsilon(t, q, steps, delta) for t in (1.0, 4.0, 8.0)]
    assert sigmas == sorted(sigmas, reverse=True)


def test_plan_samples_users_and_defaults_delta_to_one_over_users():
    plan = dp_accountant.plan(DPConfig(enabled=True, target_epsilon=4.0), num_users=1000, users_per_step=64, epochs=3)
    assert plan.sampling_rate == pytest.approx(0.064) and plan.expected_users == pytest.approx(64)
    assert plan.steps_per_epoch == math.ceil(1000 / 64) and plan.planned_steps == 3 * plan.steps_per_epoch
    assert plan.delta == pytest.approx(1e-3)
    report = plan.report(plan.planned_steps)
    assert report["epsilon"] <= 4.0 and report["epsilon"] > 3.9
    assert report["sampling"] == "poisson" and report["unit"] == "user"
    assert plan.report(plan.steps_per_epoch)["epsilon"] < report["epsilon"]  # early stopping spends less
    assert plan.report(0)["epsilon"] == 0.0
    given = dp_accountant.plan(DPConfig(enabled=True, noise_multiplier=1.1, delta=1e-5), num_users=10,
                               users_per_step=64, epochs=2)
    assert given.sampling_rate == 1.0 and given.steps_per_epoch == 1 and given.noise_multiplier == 1.1


@pytest.mark.parametrize("overrides, message", [
    (["train.privacy.enabled=true"], "exactly one of target_epsilon"),
    (["train.privacy.enabled=true", "train.privacy.target_epsilon=4", "train.privacy.noise_multiplier=1"],
     "exactly one of target_epsilon"),
    (["train.privacy.enabled=true", "train.privacy.target_epsilon=0"], "train.privacy.target_epsilon: must be > 0"),
    (["train.privacy.enabled=true", "train.privacy.noise_multiplier=-1"], "train.privacy.noise_multiplier"),
    (["train.privacy.clip_norm=0"], "train.privacy.clip_norm"),
    (["train.privacy.delta=1.5"], "train.privacy.delta"),
    (["train.privacy.examples_per_user=0"], "train.privacy.examples_per_user"),
    (["train.privacy.accountant=moments"], "train.privacy.accountant"),
    (["train.privacy.target_epsilon=fast"], "train.privacy.target_epsilon: expected float"),
    (["train.privacy.sigma=1"], "unknown configuration key 'train.privacy.sigma'"),
    (["train.per_model.sasrec.privacy={enabled: true}"], "not a per-model train setting"),
    (["train.privacy.enabled=true", "train.privacy.noise_multiplier=1", "train.softmax=sampled",
      "train.sampler=popularity"], "popularity sampler reads per-item training counts"),
])
def test_privacy_configuration_is_checked_before_spark(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], overrides)


def test_privacy_is_off_by_default_and_set_by_keys():
    assert Config().train.privacy == DPConfig() and not DPConfig().enabled
    config = load_config([], ["train.privacy.enabled=true", "train.privacy.target_epsilon=8",
                              "train.privacy.clip_norm=0.5"])
    assert config.train.privacy == DPConfig(enabled=True, target_epsilon=8.0, clip_norm=0.5)
    # Every model trains with it (a shared setting), and its keys reach MLflow as flat parameters.
    assert config.train.for_model("mean_pool").privacy == config.train.privacy


def test_privacy_reaches_mlflow_parameters_and_the_report(tmp_path):
    from recspark.evaluation.evaluate import privacy_lines, training_histories
    from recspark.stages import model_train_params, privacy_tracking

    config = load_config([], ["train.privacy.enabled=true", "train.privacy.noise_multiplier=1.0",
                              f"paths.checkpoints={tmp_path}", "train.models=[sasrec, mean_pool]"])
    plan = dp_accountant.plan(config.train.privacy, num_users=500, users_per_step=50, epochs=2)
    spent = plan.report(plan.planned_steps)
    params, metrics = privacy_tracking(SimpleNamespace(privacy=spent))  # a TrainResult's field
    flat = flatten_params({"train": model_train_params(config, "sasrec"), **params})
    assert flat["train.privacy.enabled"] == "True" and flat["train.privacy.noise_multiplier"] == "1.0"
    assert flat["dp.sampling_rate"] == "0.1" and flat["dp.steps"] == str(plan.planned_steps)
    assert metrics == {"dp_epsilon": [spent["epsilon"]]}
    off = load_config([], [])
    off_params = flatten_params({"train": model_train_params(off, "sasrec")})
    assert [key for key in off_params if "privacy" in key] == ["train.privacy.enabled"]
    assert off_params["train.privacy.enabled"] == "False"
    assert privacy_tracking(SimpleNamespace(privacy=None)) == ({}, {})

    for model, privacy in (("sasrec", spent), ("mean_pool", None)):
        config.model_dir(model).mkdir(parents=True)
        meta = {"loss_history": [2.0, 1.5], **({"privacy": privacy} if privacy else {})}
        (config.model_dir(model) / "model_meta.json").write_text(json.dumps(meta))
    histories = training_histories(config)
    assert histories["sasrec"]["privacy"] == spent and "privacy" not in histories["mean_pool"]
    lines = privacy_lines({"training": histories})
    assert len([line for line in lines if line.startswith("- ")]) == 1
    assert f"- sasrec: (epsilon={spent['epsilon']}, delta=0.002) user-level DP-SGD, poisson sampling q=0.1" in lines[-1]
    assert privacy_lines({"training": {"mean_pool": histories["mean_pool"]}}) == []
