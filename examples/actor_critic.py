"""Advantage actor-critic: two networks, two optimizers, two phases, one compiled step.

The environment is written here, in TensorFlow ops, so whole episodes run inside the
compiled step: a corridor of 7 cells, a cue that says which end pays +1 (the other end
costs -1), a small cost per move, 12 moves at most. The "critic" phase plays a batch of
episodes with the current actor (actions drawn with stateless ops from `context.seed`, so
a run is reproducible) and fits the value network to the discounted returns; the "actor"
phase reads those episodes from `context.outputs["critic"]` and follows the policy
gradient with the updated critic as baseline. Each phase trains only its own network,
with its own optimizer.

    python examples/actor_critic.py            # 20 epochs; prints mean return vs a random policy
    python examples/actor_critic.py --smoke    # 1 short epoch, for the test suite
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

from composeloop import step as cs
from composeloop.engine import compile_step, fit

CELLS, HORIZON, MOVE_COST, GAMMA, ENTROPY = 7, 12, 0.01, 0.95, 0.01


def rollout(policy, cue: tf.Tensor, start: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Plays one episode per (cue, start) with `policy` (observations -> 2 logits: left, right)."""
    position, alive = tf.cast(start, tf.int32), tf.ones_like(cue, tf.float32)
    goal = tf.where(cue == 1, CELLS - 1, 0)
    steps = {"observation": [], "action": [], "reward": [], "alive": []}
    for t in range(HORIZON):
        observation = tf.concat([tf.one_hot(position, CELLS), tf.one_hot(cue, 2)], axis=-1)
        action = tf.random.stateless_categorical(policy(observation), 1, seed=cs.fold_seed(seed, t))[:, 0]
        position = tf.clip_by_value(position + 2 * tf.cast(action, tf.int32) - 1, 0, CELLS - 1)
        at_end = tf.cast((position == 0) | (position == CELLS - 1), tf.float32)
        payoff = tf.where(position == goal, 1.0, -1.0) * at_end
        for key, value in zip(steps, (observation, action, alive * (payoff - MOVE_COST), alive), strict=True):
            steps[key].append(value)
        alive *= 1.0 - at_end
    episode = {key: tf.stack(values, axis=1) for key, values in steps.items()}  # (batch, HORIZON, ...)
    future, returns = tf.zeros_like(alive), []
    for reward in reversed(steps["reward"]):
        future = reward + GAMMA * future
        returns.insert(0, future)
    return {**episode, "return": tf.stack(returns, axis=1), "score": tf.reduce_sum(episode["reward"], axis=1)}


def per_step(context, model: str, observation: tf.Tensor) -> tf.Tensor:
    """A network over (batch, HORIZON, features) observations: one call on all steps at once."""
    flat = context.models[model](tf.reshape(observation, [-1, CELLS + 2]), training=context.training)
    return tf.reshape(flat, tf.concat([tf.shape(observation)[:2], [-1]], axis=0))


def values(context, observation: tf.Tensor) -> tf.Tensor:
    return per_step(context, "critic", observation)[..., 0]


def play(context) -> dict[str, tf.Tensor]:
    """Forward of the critic phase: a batch of episodes with the current actor, and their values."""
    actor = context.models["actor"]
    episode = rollout(lambda o: tf.stop_gradient(actor(o)), context.batch["cue"], context.batch["start"], context.seed)
    return {**episode, "value": values(context, episode["observation"])}


def critic_loss(context, outputs) -> dict[str, tf.Tensor]:
    error = tf.square(outputs["return"] - outputs["value"]) * outputs["alive"]
    return {"critic_loss": tf.reduce_sum(error, axis=1) / tf.maximum(tf.reduce_sum(outputs["alive"], axis=1), 1.0)}


def improve(context) -> dict[str, tf.Tensor]:
    """Forward of the actor phase: the critic phase's episodes, the actor's logits, advantages."""
    episode = context.outputs["critic"]
    advantage = tf.stop_gradient(episode["return"] - values(context, episode["observation"]))
    logits = per_step(context, "actor", episode["observation"])
    return {"logits": logits, "action": episode["action"], "advantage": advantage, "alive": episode["alive"]}


def actor_loss(context, outputs) -> dict[str, tf.Tensor]:
    log_p = tf.nn.log_softmax(outputs["logits"])
    chosen = tf.gather(log_p, outputs["action"], batch_dims=2)
    entropy = -tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1)
    per_step = -(chosen * outputs["advantage"] + ENTROPY * entropy) * outputs["alive"]
    return {"actor_loss": tf.reduce_sum(per_step, axis=1)}


def episodes(count: int, seed: int, batch_size: int = 64) -> tf.data.Dataset:
    """Batches of episode specs: the cue and the start cell (never an end) of each episode."""
    rng = np.random.default_rng(seed)
    specs = {"cue": rng.integers(0, 2, count).astype(np.int32), "start": rng.integers(1, CELLS - 1, count)}
    return tf.data.Dataset.from_tensor_slices(specs).batch(batch_size)


def network(outputs: int) -> keras.Model:
    return keras.Sequential([keras.Input((CELLS + 2,)), keras.layers.Dense(32, "tanh"), keras.layers.Dense(outputs)])


def main(epochs: int, episodes_per_epoch: int, evaluation_episodes: int, seed: int = 0) -> tuple[float, float]:
    keras.utils.set_random_seed(seed)
    models = {"actor": network(2), "critic": network(1)}
    critic = cs.Phase(
        name="critic",
        forward=play,
        loss=critic_loss,
        aggregate=cs.global_mean(),
        apply=cs.optimizer_apply(keras.optimizers.Adam(1e-2)),
        trains=("critic",),
        metrics=(cs.mean_output("return", "score"), cs.mean_loss("critic_loss")),
    )
    actor = cs.Phase(
        name="actor",
        forward=improve,
        loss=actor_loss,
        aggregate=cs.global_mean(),
        apply=cs.optimizer_apply(keras.optimizers.Adam(3e-3)),
        trains=("actor",),
        transform=cs.clip_by_global_norm(1.0),
    )
    program = compile_step(cs.compose(critic, actor, models=models), steps_per_execution=8, seed=seed)
    fit(
        program,
        lambda epoch: episodes(episodes_per_epoch, seed=1000 * seed + epoch),
        epochs=epochs,
        on_epoch_end=[lambda logs: print({k: round(v, 3) for k, v in logs.items()})],
    )
    # Fresh episodes, played by the trained actor and by a uniformly random policy.
    test = next(iter(episodes(evaluation_episodes, seed=10**6 + seed, batch_size=evaluation_episodes)))
    play_seed = tf.constant([seed, 1], tf.int64)
    learned = float(tf.reduce_mean(rollout(models["actor"], test["cue"], test["start"], play_seed)["score"]))
    random_policy = lambda observation: tf.zeros([tf.shape(observation)[0], 2])  # noqa: E731
    uniform = float(tf.reduce_mean(rollout(random_policy, test["cue"], test["start"], play_seed)["score"]))
    print(f"mean return: {learned:.3f} (random policy: {uniform:.3f})")
    return learned, uniform


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one short epoch, for the test suite")
    parser.add_argument("--epochs", type=int, default=20)
    arguments = parser.parse_args()
    if arguments.smoke:
        main(epochs=1, episodes_per_epoch=128, evaluation_episodes=64)
    else:
        main(epochs=arguments.epochs, episodes_per_epoch=1024, evaluation_episodes=4000)
