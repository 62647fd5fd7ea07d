"""User-level DP-SGD for the Horovod training loop (``train.privacy``; off: this module is not used).

One global step, as :mod:`recspark.dp_accountant` accounts for it:

1. **Sampling** (:class:`UserSampler`): every training user is in the step independently with
   probability q (Poisson). Every rank holds all rows (:func:`recspark.feed.read_rows`) and draws the
   same sample from a generator seeded by (the plan's secret sampling seed, step), so the ranks agree
   on it without talking;
   rank r then takes every size-th sampled user from position r, so each sampled user is processed
   by exactly one rank. A sampled user brings up to ``examples_per_user`` of their rows, drawn
   without replacement.
2. **Clipping** (:func:`clipped_user_sum`): one gradient per sampled user (of the mean loss over that
   user's rows), scaled to L2 norm at most C over all trainable variables together; the rank sums them.
3. **Noise, once per global step**: rank 0 alone adds N(0, (sigma C)^2) to every coordinate of its
   sum before the allreduce; the other ranks add none. The noise comes from a generator seeded by the
   OS, not by ``train.seed``: noise that can be regenerated from a published seed can be subtracted
   (and a resumed run would repeat the first steps' draws). The allreduce *sums* (Horovod ``Sum``, not
   ``Average``), so the global sum carries exactly one draw of the noise the accountant assumes,
   whatever the number of ranks (with noise on every rank, the variances would add up to
   N (sigma C)^2 unless each were scaled by 1/sqrt(N) and drawn independently: one draw in one
   place cannot get that wrong). Every coordinate gets noise at every step, embedding rows of
   items nobody in the step touched included: a sparse update would reveal which items the step's
   users saw.
4. **Average**: the noisy sum divided by the expected number of users per step, q x users (a
   fixed, public denominator), then applied by the plain optimizer (Adam or SGD: post-processing).

Every rank applies the same allreduced gradient to the same weights (rank 0's are broadcast after
the first step, as without DP), so the ranks end with identical weights; the driver checks it.
No ``hvd.DistributedOptimizer`` here: the gradient is reduced explicitly, so the Keras 3 trap
(optimizers Horovod does not hook into) cannot silently skip the reduction.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from recspark.constants import TARGET, USER_ID
from recspark.dp_accountant import DPPlan

if TYPE_CHECKING:
    import tensorflow as tf

class UserSampler:
    """The rows of every training user, grouped by user, and each step's Poisson sample of users."""

    def __init__(self, rows: dict[str, np.ndarray], plan: DPPlan, *, rank: int, size: int, seed: int) -> None:
        """``rows``: column -> array over the same rows, ``user_id`` among them (the whole data, in a
        fixed order: every rank must see the same users)."""
        users = rows[USER_ID]
        _, codes = np.unique(users, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        self.rows = {name: values[order] for name, values in rows.items() if name != USER_ID}
        self.counts = np.bincount(codes)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        if len(self.counts) != plan.num_users:
            raise ValueError(f"the training data holds {len(self.counts)} users, the privacy plan was made for "
                             f"{plan.num_users}: the data changed between counting and materialising")
        self.plan, self.rank, self.size, self.seed = plan, rank, size, seed

    @property
    def num_users(self) -> int:
        return len(self.counts)

    def sampled_users(self, step: int) -> np.ndarray:
        """The users (0-based codes) in global step ``step``: the same on every rank."""
        rng = np.random.default_rng([self.seed, step])
        return np.flatnonzero(rng.random(self.num_users) < self.plan.sampling_rate)

    def batch(self, step: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """This rank's part of step ``step``: (features, target, row_splits), the rows of local user i
        being ``row_splits[i]:row_splits[i + 1]``."""
        mine = self.sampled_users(step)[self.rank::self.size]
        # Row choices are this rank's own (only it handles these users): a generator of its own.
        rng = np.random.default_rng([self.seed, step, 1 + self.rank])
        take = np.minimum(self.counts[mine], self.plan.examples_per_user)
        picked = [start + rng.choice(count, size=n, replace=False)
                  for start, count, n in zip(self.starts[mine], self.counts[mine], take)]
        index = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        features = {name: values[index] for name, values in self.rows.items() if name != TARGET}
        splits = np.concatenate([[0], np.cumsum(take)]).astype(np.int32)
        return features, self.rows[TARGET][index], splits


def user_dataset(sampler: UserSampler, inputs: Sequence[str], first_step: int) -> "tf.data.Dataset":
    """Endless ``(features, target, row_splits)`` steps from global step ``first_step`` (a resumed run
    continues the same sequence), for ``fit(steps_per_epoch=plan.steps_per_epoch)``."""
    import tensorflow as tf

    def steps() -> Iterator[tuple]:
        step = first_step
        while True:
            features, target, splits = sampler.batch(step)
            yield {name: features[name] for name in inputs}, target, splits
            step += 1

    def spec(values: np.ndarray) -> tf.TensorSpec:
        return tf.TensorSpec([None, *values.shape[1:]], tf.as_dtype(values.dtype))

    signature = ({name: spec(sampler.rows[name]) for name in inputs}, spec(sampler.rows[TARGET]),
                 tf.TensorSpec([None], tf.int32))
    return tf.data.Dataset.from_generator(steps, output_signature=signature).prefetch(2)


def clipped_user_sum(model: "tf.keras.Model", features: dict, target: "tf.Tensor", splits: "tf.Tensor",
                     clip_norm: float) -> tuple[list["tf.Tensor"], "tf.Tensor", "tf.Tensor"]:
    """(sum over users of each user's gradient clipped to global L2 norm ``clip_norm``, one dense
    tensor per trainable variable; the sum of the users' losses; the number of users). One user
    at a time (a while loop): correct for every model, and the memory of one dense gradient."""
    import tensorflow as tf

    variables = model.trainable_variables
    clip = tf.constant(clip_norm, tf.float32)
    users = tf.shape(splits)[0] - 1

    def body(i, loss_sum, total):
        low, high = splits[i], splits[i + 1]
        with tf.GradientTape() as tape:
            loss = model.compute_training_loss({name: values[low:high] for name, values in features.items()},
                                               target[low:high], training=True)
            regularised = loss + tf.add_n(model.losses) if model.losses else loss
        grads = tape.gradient(regularised, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = [tf.convert_to_tensor(g) for g in grads]  # embedding rows arrive as IndexedSlices
        scale = clip / tf.maximum(tf.linalg.global_norm(grads), clip)
        return i + 1, loss_sum + loss, [t + g * scale for t, g in zip(total, grads)]

    _, loss_sum, total = tf.while_loop(
        lambda i, *_: i < users, body,
        (tf.constant(0), tf.constant(0.0), [tf.zeros_like(v) for v in variables]))
    return total, loss_sum, users


def make_train_step(model: "tf.keras.Model", plan: DPPlan, *, rank: int, size: int):
    """The DP ``train_step`` for ``model`` (installed on the instance by :func:`install`)."""
    import tensorflow as tf

    noise_std = plan.noise_multiplier * plan.clip_norm
    # Unpredictable and never repeated, whatever train.seed is (see the module docstring).
    noise = tf.random.Generator.from_non_deterministic_state() if rank == 0 else None

    def train_step(data: tuple) -> dict:
        features, target, splits = data
        total, loss_sum, users = clipped_user_sum(model, features, target, splits, plan.clip_norm)
        if rank == 0:  # the one draw of the step's noise (see the module docstring)
            total = [t + noise.normal(tf.shape(t), stddev=noise_std, dtype=t.dtype) for t in total]
        if size > 1:
            import horovod.tensorflow as hvd_tf

            # Named: Horovod matches a reduction across ranks by name, which it otherwise derives from
            # the input tensors' names, and rank 0's inputs (noise added) are named differently.
            total = hvd_tf.grouped_allreduce(total, op=hvd_tf.Sum, name="dp_sgd_gradient_sum")
        grads = [t / plan.expected_users for t in total]
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        # The loss shown is the mean over this rank's users (MetricAverageCallback averages the ranks);
        # a progress figure, not part of the private release.
        users_f = tf.cast(users, tf.float32)
        model.loss_tracker.update_state(loss_sum / tf.maximum(users_f, 1.0), sample_weight=users_f)
        return {"loss": model.loss_tracker.result()}

    return train_step


def install(model: "tf.keras.Model", plan: DPPlan, *, rank: int, size: int) -> None:
    """Replaces ``model``'s train_step by the DP step (after ``compile``, before ``fit``); set past
    Keras's attribute tracking, and never saved: the export is a fresh model."""
    object.__setattr__(model, "train_step", make_train_step(model, plan, rank=rank, size=size))
