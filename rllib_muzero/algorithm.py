"""``MuZeroConfig`` and the ``MuZero`` algorithm (RLlib old API stack).

``MuZeroConfig`` holds the typed, validated hyperparameters in RLlib's builder-config style.

Defaults follow the paper (Schrittwieser et al., arXiv 1911.08265, Appendix B/G, "the paper") unless said otherwise;
where RLlib already has a field for a concept (``gamma``, ``lr``, ``grad_clip``, ``train_batch_size``,
``num_steps_sampled_before_learning_starts``, ``training_intensity``) MuZero uses it under RLlib's name.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import functools
import logging
import math
import os
import pathlib
import re
import shutil
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import psutil
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided, TorchCompileWhatToCompile
from ray.rllib.env.env_context import EnvContext
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.policy import Policy
from ray.rllib.policy.sample_batch import SampleBatch, concat_samples
from ray.rllib.utils.metrics import (
    LEARN_ON_BATCH_TIMER,
    NUM_AGENT_STEPS_SAMPLED,
    NUM_AGENT_STEPS_TRAINED,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_TRAINED,
    REPLAY_BUFFER_SAMPLE_TIMER,
    SAMPLE_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
)
from ray.rllib.utils.typing import PolicyID
from ray.tune.registry import RLLIB_MODEL, _global_registry
from ray.util.debug import log_once

from rllib_muzero import columns
from rllib_muzero.acting import SEARCH_ALGORITHMS
from rllib_muzero.envs import check_import_path, make_env_creator, validate_env_options
from rllib_muzero.host_memory import keep_freed_host_memory
from rllib_muzero.learner_thread import MuZeroLearnerThread
from rllib_muzero.losses import SCALAR_LOSSES
from rllib_muzero.mcts import UNVISITED_VALUE_MODES
from rllib_muzero.metrics import parameter_histograms, search_statistics
from rllib_muzero.models import DEFAULT_MODEL_NAME, ModelOptionError, check_model_options
from rllib_muzero.policy import LEARNER_PRECISIONS, OPTIMIZERS, MuZeroTorchPolicy, split_action_mask_space
from rllib_muzero.reanalyse import reanalyse_policy_targets
from rllib_muzero.reanalyse_workers import ReanalysePipeline, make_reanalyse_workers
from rllib_muzero.registry import NETWORKS
from rllib_muzero.replay import SequenceReplayBuffer
from rllib_muzero.runner_state import capture_runner, episode_boundary, episode_key, restore_runner

CHECKPOINT_FORMAT_VERSION = 1  # of the "muzero" entry in algorithm_state.pkl; bump and migrate on layout changes
logger = logging.getLogger(__name__)
SAMPLE_REQUEST_TAG = "muzero_sample"  # tag of the asynchronous sample requests to the env runners
_POLL_SECONDS = 0.01  # how long one poll for ready sample requests waits (RLlib's fetch waits for all, or the timeout)


class MuZeroConfig(AlgorithmConfig):
    """Configuration of the MuZero algorithm.

    Example:
        .. code-block:: python

            from rllib_muzero import MuZeroConfig

            config = (
                MuZeroConfig()
                .environment("CartPole-v1")
                .env_runners(num_env_runners=1, num_envs_per_env_runner=8)
                .training(num_simulations=25, num_unroll_steps=5, td_steps=10, lr=3e-3)
            )
            algo = config.build_algo()
            print(algo.train()["env_runners"]["episode_return_mean"])

    The config selects RLlib's old API stack itself (``enable_rl_module_and_learner=False``,
    ``enable_env_runner_and_connector_v2=False``); users never call ``api_stack``.
    """

    def __init__(self, algo_class: type | None = None):
        super().__init__(algo_class=algo_class or MuZero)
        # Old API stack (Policy / TorchModelV2 / RolloutWorker), set as attributes: `api_stack()` would warn.
        self.enable_rl_module_and_learner = False
        self.enable_env_runner_and_connector_v2 = False
        self.exploration_config = {"type": "StochasticSampling"}  # unused by the search; keeps RLlib quiet
        self.framework_str = "torch"

        # --- RLlib fields with MuZero defaults ---
        self.gamma = 0.997  # paper Appendix G (discount)
        self.lr = 3e-3
        self.train_batch_size = 128  # paper: 1024 (Atari); small machines train smaller batches more often
        self.grad_clip = None
        self.rollout_fragment_length = 50
        self.batch_mode = "truncate_episodes"
        self.num_steps_sampled_before_learning_starts = 1000
        self.training_intensity: float | None = None
        self.model = dict(self.model, custom_model=DEFAULT_MODEL_NAME, custom_model_config={})

        # --- Search (paper Appendix B, pseudocode run_mcts / ucb_score) ---
        self.num_simulations = 50
        self.pb_c_base = 19652.0
        self.pb_c_init = 1.25
        self.root_dirichlet_alpha = 0.25
        self.root_exploration_fraction = 0.25
        self.unvisited_value = "zero"
        self.root_counts_as_visit = True
        # Gumbel MuZero (Danihelka et al. 2022): search_algorithm="gumbel"
        self.search_algorithm = "muzero"
        self.max_num_considered_actions = 16
        self.gumbel_scale = 1.0
        self.c_visit = 50.0
        self.c_scale = 0.1
        self.visit_softmax_temperatures: list[float] = [1.0, 0.5, 0.25]
        self.visit_softmax_steps: list[int] = [15_000, 30_000]
        self.fixed_temperatures: list[float] | None = None

        # --- Targets and loss (paper eq. 1, Appendix F/G) ---
        self.num_unroll_steps = 5
        self.td_steps = 10
        self.value_support: tuple[int, int] = (-300, 300)
        self.reward_support: tuple[int, int] = (-300, 300)
        self.use_target_transform = True
        self.no_support = False
        self.scalar_loss = "mse"
        self.value_loss_weight = 1.0
        self.reward_loss_weight = 1.0
        self.policy_loss_weight = 1.0
        self.optimizer_type = "adamw"
        self.learner_precision = "float32"
        self.keep_freed_host_memory = True
        self.lr_decay_rate = 1.0
        self.lr_decay_steps = 100_000
        self.lr_warmup_steps = 0
        self.use_q_max = False
        # --- Reanalyse and off-policy correction (paper Appendix H; EfficientZero, Ye et al. 2021) ---
        self.reanalyse_value = False
        self.target_update_interval = 100
        self.off_policy_correction_age: int | None = None
        self.reanalyse_policy_fraction = 0.0
        self.num_reanalyse_workers = 0
        self.num_cpus_per_reanalyse_worker = 1.0
        self.reanalyse_batches_in_flight: int | None = None
        self.consistency_loss_weight = 0.0
        self.consistency_projection_size = 128
        self.momentum = 0.9
        self.weight_decay = 1e-4

        # --- Prioritized sequence replay (paper Appendix G; Schaul et al. 2016) ---
        self.replay_capacity = 100_000
        self.replay_window_step: int | None = None
        self.prioritized_replay_alpha = 1.0
        self.prioritized_replay_beta = 1.0
        self.beta_increment_per_sampling = 0.001
        self.prioritized_replay_eps = 0.01
        self.store_buffer_in_checkpoints = True  # RLlib's field; MuZero keeps the replay in checkpoints by default

        # --- Safety ---
        self.max_nonfinite_updates_in_a_row = 10
        self.send_weights_frequency = 1
        self.weight_sync_frequency = 0
        # --- Asynchronous pipeline (runners sample while a learner thread learns; RLlib's old-stack IMPALA) ---
        self.async_sampling: bool | None = None  # None: asynchronous exactly when num_env_runners > 0
        self.max_learner_lag: int | None = None  # None: the updates one fragment of every remote runner owes
        self.debug = False  # reference's --debug: weight and gradient histograms in TensorBoard

    # ------------------------------------------------------------------ builder
    def training(
        self,
        *,
        num_simulations: int | None = NotProvided,
        search_algorithm: str | None = NotProvided,
        max_num_considered_actions: int | None = NotProvided,
        gumbel_scale: float | None = NotProvided,
        c_visit: float | None = NotProvided,
        c_scale: float | None = NotProvided,
        num_unroll_steps: int | None = NotProvided,
        td_steps: int | None = NotProvided,
        pb_c_base: float | None = NotProvided,
        pb_c_init: float | None = NotProvided,
        root_dirichlet_alpha: float | None = NotProvided,
        root_exploration_fraction: float | None = NotProvided,
        unvisited_value: str | None = NotProvided,
        root_counts_as_visit: bool | None = NotProvided,
        visit_softmax_temperatures: Sequence[float] | None = NotProvided,
        visit_softmax_steps: Sequence[int] | None = NotProvided,
        value_support: Sequence[int] | None = NotProvided,
        reward_support: Sequence[int] | None = NotProvided,
        use_target_transform: bool | None = NotProvided,
        no_support: bool | None = NotProvided,
        scalar_loss: str | None = NotProvided,
        value_loss_weight: float | None = NotProvided,
        reward_loss_weight: float | None = NotProvided,
        policy_loss_weight: float | None = NotProvided,
        optimizer_type: str | None = NotProvided,
        learner_precision: str | None = NotProvided,
        keep_freed_host_memory: bool | None = NotProvided,
        momentum: float | None = NotProvided,
        weight_decay: float | None = NotProvided,
        replay_capacity: int | None = NotProvided,
        replay_window_step: int | None = NotProvided,
        prioritized_replay_alpha: float | None = NotProvided,
        prioritized_replay_beta: float | None = NotProvided,
        beta_increment_per_sampling: float | None = NotProvided,
        prioritized_replay_eps: float | None = NotProvided,
        num_steps_sampled_before_learning_starts: int | None = NotProvided,
        training_intensity: float | None = NotProvided,
        store_buffer_in_checkpoints: bool | None = NotProvided,
        max_nonfinite_updates_in_a_row: int | None = NotProvided,
        debug: bool | None = NotProvided,
        fixed_temperatures: Sequence[float] | None = NotProvided,
        lr_decay_rate: float | None = NotProvided,
        lr_decay_steps: int | None = NotProvided,
        lr_warmup_steps: int | None = NotProvided,
        use_q_max: bool | None = NotProvided,
        reanalyse_value: bool | None = NotProvided,
        target_update_interval: int | None = NotProvided,
        off_policy_correction_age: int | None = NotProvided,
        reanalyse_policy_fraction: float | None = NotProvided,
        num_reanalyse_workers: int | None = NotProvided,
        num_cpus_per_reanalyse_worker: float | None = NotProvided,
        reanalyse_batches_in_flight: int | None = NotProvided,
        consistency_loss_weight: float | None = NotProvided,
        consistency_projection_size: int | None = NotProvided,
        send_weights_frequency: int | None = NotProvided,
        weight_sync_frequency: int | None = NotProvided,
        async_sampling: bool | None = NotProvided,
        max_learner_lag: int | None = NotProvided,
        **kwargs: Any,
    ) -> MuZeroConfig:
        """Sets MuZero's training and search hyperparameters (plus RLlib's own, e.g. ``lr``, ``gamma``).

        Args:
            num_simulations: MCTS simulations per move; one batched network call each (paper: 50 for Atari).
            search_algorithm: "muzero" (pUCT with Dirichlet root noise, paper Appendix B) or "gumbel" (Gumbel MuZero,
                Danihelka et al. 2022: Gumbel-top-k sampling of ``max_num_considered_actions`` root actions and
                Sequential Halving over ``g + logits + sigma(q)``; it improves the policy even with 2-16
                simulations). With "gumbel" the policy target is the improved policy ``softmax(logits +
                sigma(completed_q))``, acting explores through the Gumbel noise (no Dirichlet noise, no visit
                temperature) and ``explore=False`` acts greedily without noise.
            max_num_considered_actions: Gumbel: m, the root actions sampled without replacement by Gumbel-top-k
                (paper: 16; all legal actions when fewer).
            gumbel_scale: Gumbel: scale of the Gumbel noise g when exploring (1 = the paper's sampling).
            c_visit: Gumbel: c_visit of ``sigma(q) = (c_visit + max_b N(b)) * c_scale * q`` (paper: 50).
            c_scale: Gumbel: c_scale of sigma (paper: 1.0 for Go, 0.1 in mctx's default).
            num_unroll_steps: K, steps the dynamics function is unrolled in training (paper: 5).
            td_steps: n of the n-step value target z_t (paper: 10 for Atari).
            pb_c_base: c2 of the pUCT rule (paper: 19652).
            pb_c_init: c1 of the pUCT rule (paper: 1.25).
            root_dirichlet_alpha: Dirichlet noise concentration at the root when exploring (paper: 0.25).
            root_exploration_fraction: Mixing weight of that noise into the root prior (paper: 0.25).
            unvisited_value: Q of unvisited children in pUCT: "zero" (pseudocode) or "parent" (parent's mean value).
            root_counts_as_visit: Count the root's network value as its first visit so the prior decides the
                first simulation (mctx); False reproduces the pseudocode, where sqrt(0) zeroes the prior term.
            visit_softmax_temperatures: Temperatures for acting from visit counts (paper Appendix D: 1, 0.5,
                0.25); 0 means greedy.
            visit_softmax_steps: Learner updates after which the next temperature of the list applies
                (one fewer entry than ``visit_softmax_temperatures``, increasing).
            value_support: (min, max) integer atoms of the categorical value head (paper: -300..300).
            reward_support: (min, max) integer atoms of the categorical reward head.
            use_target_transform: Apply h(x) = sign(x)(sqrt(|x|+1)-1)+0.001x to value/reward targets (Appendix F).
            no_support: Scalar value and reward heads (one output each) trained with ``scalar_loss`` instead of
                categorical heads over ``value_support`` / ``reward_support`` (reference's ``--no_support``). The
                target transform still applies (the heads predict h(x) and the search reads h^-1 of them).
            scalar_loss: Loss of scalar heads: "mse" (squared error) or "huber" (delta 1). Only with ``no_support``.
            value_loss_weight: Scale of the value loss (eq. 1 has 1; the paper's Reanalyse runs use 0.25).
            reward_loss_weight: Scale of the reward loss.
            policy_loss_weight: Scale of the policy loss.
            optimizer_type: One of "sgd", "rmsprop", "adam", "adamw" (``weight_decay`` is c of eq. 1).
            learner_precision: "float32" (default) or "bf16-mixed": the learner's forward passes (the loss's unroll,
                the consistency and value-reanalyse targets) under ``torch.autocast`` with bfloat16 on the learner's
                device, the cross-entropies and the optimizer in float32. 1.1-1.45x faster updates measured on a CPU
                with AVX512-BF16 (docs/benchmarks.md); GPUs with bf16 units gain as usual from autocast (not measured
                here); CPUs without native bf16 emulate it, slower. Acting and policy reanalyse search in float32.
            keep_freed_host_memory: True (default): the process that runs the learner keeps the host memory its updates
                free for the next update (glibc's ``mallopt`` mmap and trim thresholds) instead of returning it to
                the operating system and faulting it back in, page by page, at every update: about 30 % more
                updates/s on the CPU learner with ``learner_precision="bf16-mixed"`` and ``torch_compile_learner``,
                no measurable change in float32 (docs/benchmarks.md). The process keeps its peak heap. Process-wide;
                a no-op where the C library is not glibc. ``rllib_muzero/host_memory.py`` says why.
            momentum: Momentum for "sgd" and "rmsprop" (paper: 0.9).
            weight_decay: L2 / decoupled weight decay (paper: 1e-4).
            replay_capacity: Transitions kept in the replay buffer; the oldest are evicted first.
            replay_window_step: None, or grow the replay window over training (reference's ``--window_step``): the
                buffer starts as a ring of this many transitions and grows by it each time the ring wraps around,
                up to ``replay_capacity``.
            prioritized_replay_alpha: Priority exponent alpha, P(i) = p_i^alpha / sum_k p_k^alpha (paper: 1).
            prioritized_replay_beta: Initial importance-sampling exponent beta (paper: 1).
            beta_increment_per_sampling: Added to beta on every replay sample, up to 1.
            prioritized_replay_eps: epsilon added to |nu - z| so no stored position has zero priority.
            num_steps_sampled_before_learning_starts: Env steps stored before the first learner update.
            training_intensity: Replayed positions per new env step (replay ratio). None: one update per
                ``training_step``.
            store_buffer_in_checkpoints: Keep the replay buffer (contents and priorities) in checkpoints so a
                resumed run continues exactly (synchronous pipeline: bit for bit, README "Resume"); False makes
                checkpoints small, and a resumed run starts from an empty replay.
            max_nonfinite_updates_in_a_row: A learner update with a NaN/inf loss, gradient or priority, or that
                leaves NaN/inf in the weights or the optimizer state, is undone (weights, optimizer state and the
                schedules that count updates as before it); this many in a row stop training with an error.
            debug: Report weight and gradient histograms every iteration (TensorBoard through Tune).
            fixed_temperatures: One acting temperature per env runner instead of the schedule (reference's
                ``--fixed_temperatures``); the list length must equal ``num_env_runners`` (1 when 0 runners).
            lr_decay_rate: lr(t) = lr * warmup(t) * lr_decay_rate ^ (t / lr_decay_steps), t = learner updates
                (paper pseudocode: ExponentialDecay); 1 keeps ``lr`` constant.
            lr_decay_steps: Learner updates over which the lr falls by the factor ``lr_decay_rate``.
            lr_warmup_steps: Linear warm-up over this many learner updates, warmup(t) = min(1, (t + 1) / steps).
            use_q_max: Bootstrap value targets from max_a Q(s, a) of the search (visited root children) instead of
                the root's visit-averaged value (reference's ``--use_q_max``).
            reanalyse_value: Value reanalyse (paper Appendix H "Reanalyze"; EfficientZero): every bootstrap value of
                the n-step target ``z_t = sum_{i<n} gamma^i u_{t+1+i} + gamma^n v_{t+n}`` is recomputed when the
                batch is sampled, ``v_{t+n} = value(representation(o_{t+n}))`` by the target network (one batched
                forward pass), instead of the search value ``nu_{t+n}`` stored at acting time (which came from an
                older network and a noisy search).
            target_update_interval: Learner updates between refreshes of the target network, a frozen copy of the
                network used for the reanalysed values (EfficientZero: 200; 1 = the weights before each update).
            off_policy_correction_age: EfficientZero's off-policy correction (Ye et al. 2021, section 4.3): a sample
                of age a (transitions stored after it) bootstraps after ``clip(td_steps - floor(a / this), 1,
                td_steps)`` steps instead of ``td_steps``: old trajectories come from an older policy, so their
                rewards say less about the current policy's return than the current (reanalysed) value does. None:
                off.
            reanalyse_policy_fraction: Policy reanalyse (paper Appendix H: 0.8 of the batch; EfficientZero: all of
                it): for this share of each batch's rows the policy targets ``pi_{t+k}`` come from a fresh batched
                search (root noise as when acting) with the target network from the stored observations, instead of
                the visit counts recorded when the move was played. The costly part of Reanalyse: one search of
                ``fraction * B * (K + 1)`` roots per learner update. 0 = off.
            num_reanalyse_workers: Ray actors that run policy reanalyse's searches instead of the learner
                (:mod:`rllib_muzero.reanalyse_workers`; MuZero Reanalyze and EfficientZero run them apart from the
                learner), with the target network's weights; they scale out with the cluster as env runners do.
                0 = the learner searches in line. Needs ``reanalyse_policy_fraction`` > 0.
            num_cpus_per_reanalyse_worker: CPUs Ray reserves for each reanalyse worker (also its torch threads).
            reanalyse_batches_in_flight: Replay batches per policy sent to the reanalyse workers ahead of the one
                the learner trains on (their targets come from a target network at most this many updates old).
                None = 2 per worker.
            consistency_loss_weight: Weight of EfficientZero's temporal consistency loss (Ye et al. 2021, 4.1),
                ``l^c_k = -cos(Q(P(s^k)), sg[P(h(o_{t+k}))])`` at every unroll step k >= 1: the hidden state the
                dynamics predicts is pulled towards the representation of the observation that really followed
                (SimSiam projection P and prediction Q heads beside the network). EfficientZero: 2; 0 = off.
            consistency_projection_size: Width of the consistency heads' projection (their output size).
            send_weights_frequency: Learner updates between weight broadcasts to the env runners.
            weight_sync_frequency: Env steps sampled between weight broadcasts (0: no minimum); both must be met.
                In asynchronous mode a broadcast is a new weights snapshot that each env runner takes with its next
                sample request.
            async_sampling: The asynchronous pipeline (docs/design.md, "The asynchronous pipeline"): remote env
                runners sample continuously through RLlib's asynchronous requests while a learner thread trains
                (as RLlib's old-stack IMPALA), the replay ratio ``training_intensity`` held by throttling whichever
                side runs ahead. None (default): asynchronous exactly when ``num_env_runners > 0``; False: the
                synchronous loop (sample, store, learn, sync), which reproduces a seeded run exactly; True needs
                ``num_env_runners >= 1``. With ``training_intensity=None`` the asynchronous learner owes one update
                per fragment received (the synchronous loop: one per iteration).
            max_learner_lag: Asynchronous mode: the most learner updates the learner may owe (due by the replay
                ratio, not yet run) before new sample requests are held back. None (default): the updates one
                fragment from every remote env runner owes (at least 1). The learner never runs ahead of the ratio.
        """
        super().training(**kwargs)
        for name, value in dict(
            num_simulations=num_simulations,
            search_algorithm=search_algorithm,
            max_num_considered_actions=max_num_considered_actions,
            gumbel_scale=gumbel_scale,
            c_visit=c_visit,
            c_scale=c_scale,
            num_unroll_steps=num_unroll_steps,
            td_steps=td_steps,
            pb_c_base=pb_c_base,
            pb_c_init=pb_c_init,
            root_dirichlet_alpha=root_dirichlet_alpha,
            root_exploration_fraction=root_exploration_fraction,
            unvisited_value=unvisited_value,
            root_counts_as_visit=root_counts_as_visit,
            visit_softmax_temperatures=visit_softmax_temperatures,
            visit_softmax_steps=visit_softmax_steps,
            value_support=value_support,
            reward_support=reward_support,
            use_target_transform=use_target_transform,
            no_support=no_support,
            scalar_loss=scalar_loss,
            value_loss_weight=value_loss_weight,
            reward_loss_weight=reward_loss_weight,
            policy_loss_weight=policy_loss_weight,
            optimizer_type=optimizer_type,
            learner_precision=learner_precision,
            keep_freed_host_memory=keep_freed_host_memory,
            momentum=momentum,
            weight_decay=weight_decay,
            replay_capacity=replay_capacity,
            replay_window_step=replay_window_step,
            prioritized_replay_alpha=prioritized_replay_alpha,
            prioritized_replay_beta=prioritized_replay_beta,
            beta_increment_per_sampling=beta_increment_per_sampling,
            prioritized_replay_eps=prioritized_replay_eps,
            num_steps_sampled_before_learning_starts=num_steps_sampled_before_learning_starts,
            training_intensity=training_intensity,
            store_buffer_in_checkpoints=store_buffer_in_checkpoints,
            max_nonfinite_updates_in_a_row=max_nonfinite_updates_in_a_row,
            debug=debug,
            fixed_temperatures=fixed_temperatures,
            lr_decay_rate=lr_decay_rate,
            lr_decay_steps=lr_decay_steps,
            lr_warmup_steps=lr_warmup_steps,
            use_q_max=use_q_max,
            reanalyse_value=reanalyse_value,
            target_update_interval=target_update_interval,
            off_policy_correction_age=off_policy_correction_age,
            reanalyse_policy_fraction=reanalyse_policy_fraction,
            num_reanalyse_workers=num_reanalyse_workers,
            num_cpus_per_reanalyse_worker=num_cpus_per_reanalyse_worker,
            reanalyse_batches_in_flight=reanalyse_batches_in_flight,
            consistency_loss_weight=consistency_loss_weight,
            consistency_projection_size=consistency_projection_size,
            send_weights_frequency=send_weights_frequency,
            weight_sync_frequency=weight_sync_frequency,
            async_sampling=async_sampling,
            max_learner_lag=max_learner_lag,
        ).items():
            if value is not NotProvided:
                setattr(self, name, value)
        return self

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Checks every MuZero option and raises ``ValueError`` naming the option, the value and what is accepted.

        One line per mistake, before any worker starts: the MuZero fields, the RLlib fields MuZero runs on (resources,
        sampling, seed, evaluation), the network named by ``model`` and its ``custom_model_config`` (checked
        statically for the built-in networks), ``env_config`` and the ``evaluation_config`` overrides. Numbers must
        be finite wherever a finite number is meant. RLlib's own checks run too; their messages are put on one line.
        """
        self._validate_known_keys()
        self._validate_rllib_fields()
        try:
            super().validate()
        except ValueError as error:  # RLlib's messages span lines and end in a hint to switch validation off
            lines = [line.strip() for line in str(error).splitlines()
                     if line.strip() and not line.strip().startswith("To suppress all validation errors")]
            raise ValueError(" ".join(lines)) from None
        validate_env_options(self.env, self.env_config)
        eval_overrides = self.evaluation_config if isinstance(self.evaluation_config, dict) else {}
        if eval_overrides.get("env_config"):
            validate_env_options(self.env, {**self.env_config, **eval_overrides["env_config"]})
        self._validate_model()
        if self.enable_rl_module_and_learner or self.enable_env_runner_and_connector_v2:
            _fail("api_stack", "new API stack", "MuZero runs on RLlib's old API stack only (both flags False)")
        _check_int(self, "num_simulations", minimum=1)
        _check_int(self, "num_unroll_steps", minimum=1)
        _check_int(self, "td_steps", minimum=1)
        _check_int(self, "train_batch_size", minimum=1)
        _check_int(self, "replay_capacity", minimum=1)
        _check_int(self, "num_steps_sampled_before_learning_starts", minimum=0)
        _check_int(self, "max_nonfinite_updates_in_a_row", minimum=1)
        _check_int(self, "lr_decay_steps", minimum=1)
        _check_int(self, "lr_warmup_steps", minimum=0)
        _check_int(self, "send_weights_frequency", minimum=1)
        _check_int(self, "weight_sync_frequency", minimum=0)
        _check_int(self, "target_update_interval", minimum=1)
        self._validate_async()
        self._validate_reanalyse_workers()
        if self.search_algorithm not in SEARCH_ALGORITHMS:
            _fail("search_algorithm", self.search_algorithm, f"one of {list(SEARCH_ALGORITHMS)}")
        _check_int(self, "max_num_considered_actions", minimum=1)
        for name in ("gumbel_scale", "c_visit", "c_scale"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                _fail(name, value, "a finite number >= 0")
        _check_int(self, "consistency_projection_size", minimum=4)
        for name in ("reanalyse_value", "root_counts_as_visit", "use_target_transform", "use_q_max",
                     "store_buffer_in_checkpoints", "debug", "keep_freed_host_memory"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "True or False")
        if self.off_policy_correction_age is not None and (
            not isinstance(self.off_policy_correction_age, int) or isinstance(self.off_policy_correction_age, bool)
            or self.off_policy_correction_age < 1
        ):
            _fail("off_policy_correction_age", self.off_policy_correction_age, "None or an integer >= 1")
        if not _is_number(self.lr_decay_rate) or not 0.0 < self.lr_decay_rate <= 1.0:
            _fail("lr_decay_rate", self.lr_decay_rate, "a finite number in (0, 1] (1 = no decay)")
        if self.fixed_temperatures is not None:
            runners = max(self.num_env_runners, 1)
            if (not isinstance(self.fixed_temperatures, (list, tuple))
                    or any(not _is_number(t) or t < 0 for t in self.fixed_temperatures)):
                _fail("fixed_temperatures", self.fixed_temperatures,
                      "None or a list of finite numbers >= 0, one per env runner")
            if len(self.fixed_temperatures) != runners and not self.in_evaluation:
                _fail("fixed_temperatures", self.fixed_temperatures,
                      f"one temperature per env runner: {runners} (`num_env_runners`={self.num_env_runners}; "
                      "the local runner counts as one when there are none)")
        if self.replay_window_step is not None and (
            not isinstance(self.replay_window_step, int) or isinstance(self.replay_window_step, bool)
            or not 1 <= self.replay_window_step <= self.replay_capacity
        ):
            _fail("replay_window_step", self.replay_window_step,
                  f"None or an integer in [1, `replay_capacity`={self.replay_capacity}]")
        if not isinstance(self.no_support, bool):
            _fail("no_support", self.no_support, "True or False")
        if self.scalar_loss not in SCALAR_LOSSES:
            _fail("scalar_loss", self.scalar_loss, f"one of {sorted(SCALAR_LOSSES)}")
        if self.replay_capacity < self.train_batch_size:
            _fail("replay_capacity", self.replay_capacity,
                  f"an integer >= `train_batch_size` ({self.train_batch_size}): the buffer must hold one batch")
        if not _is_number(self.gamma) or not 0.0 < self.gamma <= 1.0:
            _fail("gamma", self.gamma, "a discount in (0, 1]")
        if not _is_number(self.lr) or self.lr <= 0:
            _fail("lr", self.lr, "a positive finite number (schedules are not supported: see `lr_decay_rate`)")
        for name in ("pb_c_base", "pb_c_init", "root_dirichlet_alpha", "prioritized_replay_eps"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "a positive finite number")
        for name in ("root_exploration_fraction", "prioritized_replay_beta", "momentum", "reanalyse_policy_fraction"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                _fail(name, value, "a number in [0, 1]")
        for name in ("prioritized_replay_alpha", "beta_increment_per_sampling", "weight_decay",
                     "value_loss_weight", "reward_loss_weight", "policy_loss_weight", "consistency_loss_weight"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                _fail(name, value, "a finite number >= 0")
        if self.grad_clip is not None and (not _is_number(self.grad_clip) or self.grad_clip <= 0):
            _fail("grad_clip", self.grad_clip, "None (no clipping) or a positive finite number")
        if self.training_intensity is not None and (
            not _is_number(self.training_intensity) or self.training_intensity <= 0
        ):
            _fail("training_intensity", self.training_intensity, "None or a positive finite number (replay ratio)")
        if self.unvisited_value not in UNVISITED_VALUE_MODES:
            _fail("unvisited_value", self.unvisited_value, f"one of {list(UNVISITED_VALUE_MODES)}")
        if str(self.optimizer_type).lower() not in OPTIMIZERS:
            _fail("optimizer_type", self.optimizer_type, f"one of {list(OPTIMIZERS)}")
        if self.learner_precision not in LEARNER_PRECISIONS:
            _fail("learner_precision", self.learner_precision, f"one of {list(LEARNER_PRECISIONS)}")
        for name in ("value_support", "reward_support"):
            _check_support(name, getattr(self, name))
        self._validate_temperatures()
        if self.batch_mode not in ("truncate_episodes", "complete_episodes"):
            _fail("batch_mode", self.batch_mode, "'truncate_episodes' or 'complete_episodes'")
        self._validate_evaluation_overrides()

    def _validate_rllib_fields(self) -> None:
        """RLlib's own fields that MuZero runs on. RLlib 2.60 accepts most of these unchecked on the old API stack
        (``num_env_runners=-1``, ``rollout_fragment_length=0``, ``seed=1.5``, ``evaluation_interval=-1``, ...) and
        fails later, inside a worker, or never (a negative evaluation interval just never evaluates)."""
        _check_int(self, "num_env_runners", minimum=0)
        _check_int(self, "num_envs_per_env_runner", minimum=1)
        if self.rollout_fragment_length != "auto":
            _check_int(self, "rollout_fragment_length", minimum=1, also="'auto'")
        for name in ("num_cpus_for_main_process", "num_gpus", "num_cpus_per_env_runner", "num_gpus_per_env_runner"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                _fail(name, value, "a finite number >= 0 (fractions share a CPU or GPU)")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            _fail("seed", self.seed, "None (fresh entropy) or an integer >= 0")
        if not isinstance(self.explore, bool):
            _fail("explore", self.explore, "True or False")
        _check_int(self, "max_requests_in_flight_per_env_runner", minimum=1)
        _check_int(self, "metrics_num_episodes_for_smoothing", minimum=1)
        _check_int(self, "min_sample_timesteps_per_iteration", minimum=0)
        _check_int(self, "min_train_timesteps_per_iteration", minimum=0)
        if self.min_time_s_per_iteration is not None and (
            not _is_number(self.min_time_s_per_iteration) or self.min_time_s_per_iteration < 0
        ):
            _fail("min_time_s_per_iteration", self.min_time_s_per_iteration, "None or a finite number of seconds >= 0")
        for name in ("sample_timeout_s", "evaluation_sample_timeout_s"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                _fail(name, value, "None (wait forever) or a positive finite number of seconds")
        # Evaluation (RLlib: `evaluation_interval` None or 0 switches it off).
        if self.evaluation_interval is not None:
            _check_int(self, "evaluation_interval", minimum=0, also="None (no evaluation)")
        _check_int(self, "evaluation_num_env_runners", minimum=0)
        if self.evaluation_duration != "auto":
            _check_int(self, "evaluation_duration", minimum=1, also="'auto'")
        if self.evaluation_duration_unit not in ("episodes", "timesteps"):
            _fail("evaluation_duration_unit", self.evaluation_duration_unit, "'episodes' or 'timesteps'")
        if not isinstance(self.model, dict):
            _fail("model", self.model, "a dict of model options, e.g. {'custom_model': 'muzero_fc', "
                  "'custom_model_config': {'hidden_size': 64}}")
        if self.evaluation_config is not None and not isinstance(self.evaluation_config, (dict, AlgorithmConfig)):
            _fail("evaluation_config", self.evaluation_config,
                  "None or a dict of config overrides for evaluation (e.g. MuZeroConfig.overrides(explore=False))")
        self._validate_torch_compile()

    def _validate_torch_compile(self) -> None:
        """RLlib's ``framework(torch_compile_learner=...)`` options, as MuZero honours them: the learner's loss (the
        network's unroll and the cross-entropies, forward and backward) is compiled (:func:`compile_unroll_loss`);
        the optimizer step is not (``torch_compile_learner_what_to_compile`` "complete_update" is refused), and acting
        is never compiled: the search runs its own numpy inference (``torch_compile_worker`` is refused rather than
        silently ignored)."""
        if self.torch_compile_worker:
            _fail("torch_compile_worker", self.torch_compile_worker,
                  "False: MuZero's search does not run the network through torch.compile (it uses its own numpy "
                  "inference on CPU); use torch_compile_learner for the learner")
        if not self.torch_compile_learner:
            return
        if self.torch_compile_learner is not True:
            _fail("torch_compile_learner", self.torch_compile_learner, "True or False")
        if self.torch_compile_learner_what_to_compile != TorchCompileWhatToCompile.FORWARD_TRAIN:
            _fail("torch_compile_learner_what_to_compile", self.torch_compile_learner_what_to_compile,
                  f"{TorchCompileWhatToCompile.FORWARD_TRAIN.value!r} (MuZero compiles the loss, forward and "
                  "backward; the optimizer step stays eager)")
        import torch._dynamo
        import torch._inductor

        backends = sorted(torch._dynamo.list_backends(exclude_tags=()))
        if self.torch_compile_learner_dynamo_backend not in backends:
            _fail("torch_compile_learner_dynamo_backend", self.torch_compile_learner_dynamo_backend,
                  f"one of torch's dynamo backends {backends}")
        modes = [None, *sorted(torch._inductor.list_mode_options())]
        if self.torch_compile_learner_dynamo_mode not in modes:
            _fail("torch_compile_learner_dynamo_mode", self.torch_compile_learner_dynamo_mode, f"one of {modes}")

    def _validate_model(self) -> None:
        """``model.custom_model`` must name a network that exists, and a built-in network's ``custom_model_config``
        must pass its option checks. Without this a typo fails only when the env runners build their policies
        (after Ray and Tune have started), in the worst case as a bare error inside a remote runner."""
        model = self.model
        name = model.get("custom_model")
        options = model.get("custom_model_config")
        if options is not None and not isinstance(options, dict):
            _fail("model.custom_model_config", options, "a dict of the network's options")
        if isinstance(name, type):
            return  # a class: RLlib builds it as given; check_muzero_model checks it when the policy is built
        accepted = (f"a built-in network ({', '.join(repr(n) for n in NETWORKS)}), a name registered with "
                    "ModelCatalog.register_custom_model, a MuZeroModelV2 subclass or its import path")
        if isinstance(name, str) and "." in name:  # RLlib imports a class path itself
            check_import_path("model.custom_model", name, accepted)
            return
        if not isinstance(name, str) or not _global_registry.contains(RLLIB_MODEL, name):
            close = difflib.get_close_matches(name, list(NETWORKS), n=2) if isinstance(name, str) else []
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            _fail("model.custom_model", name, accepted + hint)
        network = NETWORKS.get(name)
        registered = _global_registry.get(RLLIB_MODEL, name) if network is not None else None
        if network is None or (getattr(registered, "__module__", None), getattr(registered, "__qualname__", None)) != (
                network.__module__, network.__qualname__):  # by name: a class unpickled by value is another object
            return  # a user's network: its options are its own business (checked when it is built)
        try:
            check_model_options(network, model)
        except ModelOptionError as error:
            known = sorted(network.DEFAULT_CONFIG)
            if error.key not in network.DEFAULT_CONFIG:
                close = difflib.get_close_matches(error.key, known, n=2)
                hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
                _fail(f"model.custom_model_config.{error.key}", error.value,
                      f"an option of {name!r}: one of {known}{hint}")
            _fail(f"model.custom_model_config.{error.key}", error.value, f"{error.expected} (an option of {name!r})")

    def _validate_evaluation_overrides(self) -> None:
        """The evaluation config (this config updated by ``evaluation_config``) must be valid too. RLlib builds and
        validates it only inside ``Algorithm.setup``; here a bad override is named as ``evaluation_config.<key>``."""
        if self.in_evaluation or not self.evaluation_config:
            return
        try:
            self.get_evaluation_config_object().validate()
        except ValueError as error:
            message = str(error)
            if message.startswith(_FAIL_PREFIX + "`"):
                raise ValueError(message.replace(_FAIL_PREFIX + "`", _FAIL_PREFIX + "`evaluation_config.", 1)) from None
            raise ValueError(f"In `evaluation_config`: {message}") from None

    # ------------------------------------------------------------------ RLlib's copies of the config
    def get_state(self) -> dict[str, Any]:
        """RLlib's state of the config, keeping the fields whose value is -1.

        RLlib's ``get_state`` drops every value equal to its ``DEPRECATED_VALUE`` (-1), and ``Algorithm.__init__``
        rebuilds the config from that state before validating it: ``training(num_simulations=-1)`` would silently run
        with the default 50. Only RLlib's own deprecated placeholders (-1 by default) are left out here, so a -1 the
        user set reaches ``validate()`` and is refused.
        """
        state = super().get_state()
        for key in _minus_one_fields(self):
            state[key] = getattr(self, key)
        return state

    def to_dict(self) -> dict[str, Any]:
        """RLlib's dict form (Tune's ``param_space``), keeping the fields whose value is -1.

        RLlib's ``to_dict`` pops some old RLlib keys when they are -1, among them ``prioritized_replay_alpha``,
        ``prioritized_replay_beta`` and ``prioritized_replay_eps``, which are live MuZero fields: a -1 there would be
        replaced by the default instead of being refused.
        """
        config = super().to_dict()
        for key in _minus_one_fields(self):
            config.setdefault(key, getattr(self, key))
        return config

    def build_algo(self, env: Any = None, use_copy: bool = True) -> MuZero:
        """RLlib's ``build_algo``, after validating this config as the user wrote it.

        ``Algorithm.__init__`` validates a copy rebuilt through ``get_state`` / ``from_state``; validating first means
        what is refused is exactly what was set, whatever RLlib's copy drops or converts on the way.
        """
        checked = self.copy(copy_frozen=False)
        if env is not None:
            checked.env = env
        checked.validate()
        return super().build_algo(env=env, use_copy=use_copy)

    def _validate_reanalyse_workers(self) -> None:
        _check_int(self, "num_reanalyse_workers", minimum=0)
        value = self.num_cpus_per_reanalyse_worker
        if not _is_number(value) or value <= 0:
            _fail("num_cpus_per_reanalyse_worker", value, "a positive finite number (CPUs per reanalyse worker)")
        if self.reanalyse_batches_in_flight is not None:
            _check_int(self, "reanalyse_batches_in_flight", minimum=1, also="None (2 per reanalyse worker)")
        if self.num_reanalyse_workers > 0 and not (
            _is_number(self.reanalyse_policy_fraction) and self.reanalyse_policy_fraction > 0
        ) and not self.in_evaluation:
            _fail("num_reanalyse_workers", self.num_reanalyse_workers,
                  f"0 while `reanalyse_policy_fraction`={self.reanalyse_policy_fraction!r}: the workers run policy "
                  "reanalyse's searches (set `reanalyse_policy_fraction` > 0 to use them)")

    @property
    def uses_reanalyse_workers(self) -> bool:
        """Whether policy reanalyse runs in reanalyse workers (``num_reanalyse_workers`` > 0 with policy reanalyse on);
        the one test for the resource request and the algorithm's setup."""
        return self.num_reanalyse_workers > 0 and self.reanalyse_policy_fraction > 0

    @property
    def reanalyse_depth(self) -> int:
        """Batches per policy in flight to the reanalyse workers (``reanalyse_batches_in_flight``, None = 2 per
        worker)."""
        if self.reanalyse_batches_in_flight is not None:
            return int(self.reanalyse_batches_in_flight)
        return 2 * int(self.num_reanalyse_workers)

    def _validate_async(self) -> None:
        if self.async_sampling is not None and not isinstance(self.async_sampling, bool):
            _fail("async_sampling", self.async_sampling,
                  "None (asynchronous exactly when `num_env_runners` > 0), True or False")
        if self.async_sampling is True and self.num_env_runners == 0 and not self.in_evaluation:
            _fail("async_sampling", self.async_sampling,
                  "False or None with `num_env_runners`=0: the asynchronous pipeline samples on remote env runners "
                  "(set `num_env_runners` >= 1)")
        if self.max_learner_lag is not None and (
            not isinstance(self.max_learner_lag, int) or isinstance(self.max_learner_lag, bool)
            or self.max_learner_lag < 1
        ):
            _fail("max_learner_lag", self.max_learner_lag, "None (auto) or an integer >= 1")

    @property
    def uses_async_sampling(self) -> bool:
        """Whether the algorithm runs the asynchronous pipeline (``async_sampling``, None = remote runners)."""
        if self.async_sampling is None:
            return self.num_env_runners > 0
        return bool(self.async_sampling)

    def _validate_temperatures(self) -> None:
        temps = self.visit_softmax_temperatures
        steps = self.visit_softmax_steps
        if not isinstance(temps, (list, tuple)) or not temps:
            _fail("visit_softmax_temperatures", temps, "a non-empty list of numbers >= 0 (0 = greedy)")
        if any(not _is_number(t) or t < 0 for t in temps):
            _fail("visit_softmax_temperatures", temps, "numbers >= 0 (0 = greedy)")
        if not isinstance(steps, (list, tuple)) or len(steps) != len(temps) - 1:
            _fail("visit_softmax_steps", steps,
                  f"a list of {len(temps) - 1} learner-update counts (one fewer than `visit_softmax_temperatures`)")
        if any(not isinstance(s, int) or s < 0 for s in steps) or list(steps) != sorted(steps):
            _fail("visit_softmax_steps", steps, "increasing non-negative integers")

    def _validate_known_keys(self) -> None:
        """Rejects attributes no MuZeroConfig has (a YAML/dict typo is otherwise silently ignored by RLlib)."""
        known = _known_keys()
        unknown = sorted(k for k in vars(self) if k not in known and not k.startswith("_"))
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"Unknown MuZero config key `{key}`.{hint} See MuZeroConfig's builder methods for the "
                             "accepted keys.")

    @property
    def visit_softmax_schedule(self) -> list[tuple[int, float]]:
        """[(from_learner_update, temperature), ...], the acting temperature schedule."""
        starts = [0, *self.visit_softmax_steps]
        return list(zip(starts, self.visit_softmax_temperatures))


_KNOWN_KEYS: frozenset | None = None


def _known_keys() -> frozenset:
    global _KNOWN_KEYS  # a cache of a pure function of the class, not state
    if _KNOWN_KEYS is None:
        default = MuZeroConfig()
        keys = set(vars(default))
        keys.update(default.to_dict().keys())
        keys.update(default.get_state().keys())  # e.g. "class", set by Algorithm.__init__'s from_state()
        # Old names RLlib still maps (update_from_dict) and keys Tune injects.
        keys.update({"num_workers", "num_envs_per_worker", "callbacks", "env_config", "__trial_info__"})
        _KNOWN_KEYS = frozenset(keys)
    return _KNOWN_KEYS


DEPRECATED_VALUE = -1  # RLlib's placeholder for deprecated fields (ray._common.deprecation, a private module)
_MINUS_ONE_PLACEHOLDERS: frozenset | None = None


def _minus_one_fields(config: AlgorithmConfig) -> list[str]:
    """The fields of ``config`` set to -1 (RLlib's ``DEPRECATED_VALUE``) that are not one of RLlib's deprecated
    placeholders (fields that are -1 in a fresh config): RLlib's ``get_state`` / ``to_dict`` would drop them."""
    global _MINUS_ONE_PLACEHOLDERS  # a cache of a pure function of the class, not state
    if _MINUS_ONE_PLACEHOLDERS is None:
        _MINUS_ONE_PLACEHOLDERS = frozenset(k for k, v in vars(MuZeroConfig()).items() if _is_minus_one(v))
    return [k for k, v in vars(config).items()
            if _is_minus_one(v) and k not in _MINUS_ONE_PLACEHOLDERS and k not in ("algo_class", "_is_frozen")]


def _is_minus_one(value: Any) -> bool:
    return type(value) in (int, float) and value == DEPRECATED_VALUE


_FAIL_PREFIX = "Invalid MuZero config "


def _fail(option: str, value: Any, accepted: str) -> None:
    raise ValueError(f"{_FAIL_PREFIX}`{option}`={value!r}: expected {accepted}.")


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool): NaN and infinities are refused wherever a number is meant."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(config: MuZeroConfig, name: str, minimum: int, also: str | None = None) -> None:
    value = getattr(config, name)
    if not _is_int(value) or value < minimum:
        _fail(name, value, f"{also} or an integer >= {minimum}" if also else f"an integer >= {minimum}")


def _check_support(name: str, value: Any) -> None:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        _fail(name, value, "a (min, max) pair of integers")
    if value[0] >= value[1]:
        _fail(name, value, "min < max (a support needs at least two atoms)")


class MuZero(Algorithm):
    """MuZero (Schrittwieser et al. 2020) as an RLlib algorithm on the old API stack.

    Env runners act with :class:`~rllib_muzero.policy.MuZeroTorchPolicy` (batched MCTS); the driver keeps one
    :class:`~rllib_muzero.replay.SequenceReplayBuffer` per trained policy and runs the learner updates.
    """

    @classmethod
    def get_default_config(cls) -> MuZeroConfig:
        return MuZeroConfig()

    @classmethod
    def get_default_policy_class(cls, config: AlgorithmConfig) -> type[Policy]:
        return MuZeroTorchPolicy

    @classmethod
    def default_resource_request(cls, config: AlgorithmConfig | dict) -> Any:
        """RLlib's request (main process, env runners, evaluation runners) plus one bundle of
        ``num_cpus_per_reanalyse_worker`` CPUs per reanalyse worker, so that Tune reserves them for the trial."""
        request = super().default_resource_request(config)
        config = cls.get_default_config().update_from_dict(config) if isinstance(config, dict) else config
        if config.uses_reanalyse_workers:
            from ray.tune import PlacementGroupFactory

            head = [{"CPU": 0}] if request.head_bundle_is_empty else []  # `bundles` leaves an empty head out
            request = PlacementGroupFactory(
                bundles=[*head, *request.bundles,
                         *([{"CPU": config.num_cpus_per_reanalyse_worker}] * config.num_reanalyse_workers)],
                strategy=request.strategy)
        return request

    @staticmethod
    def _get_env_id_and_creator(env_specifier: Any, config: AlgorithmConfig) -> tuple[Any, Any]:
        """``config.env`` -> (env_id, creator): RLlib's resolution plus the reference's legacy ids and MuZero's env
        options (``env_config``: sticky actions, frame stacking, ...), see :mod:`rllib_muzero.envs`."""
        return make_env_creator(env_specifier, config)

    def setup(self, config: AlgorithmConfig) -> None:
        self._check_env_spaces()  # before any env runner starts
        # Process-wide, so once here, in the process that runs the learner (rllib_muzero/host_memory.py).
        self.host_memory_kept = bool(config.keep_freed_host_memory) and keep_freed_host_memory()
        super().setup(config)
        self.replay_rng = np.random.default_rng(np.random.SeedSequence(self._seed_entropy(stream=1)))
        self.replays: dict[PolicyID, SequenceReplayBuffer] = {}
        self._check_replay_fits_in_memory()
        # Sorted: the learner updates the policies in this order from one shared generator (replay_rng), and the
        # policy map's order can come from a set of ids, which differs from process to process (string hashing).
        for pid, policy in sorted(self.env_runner.policy_map.items(), key=lambda item: str(item[0])):
            self.replays[pid] = self._make_replay(policy)
        self._updates_due = 0.0
        self._nonfinite_in_a_row = 0
        self._updates_since_sync = 0
        self._env_steps_since_sync = 0
        # Exact resume: env steps sampled at the checkpoint that ended the episodes in progress, whose env runners
        # are reset before the next sample (None: no such boundary pending); see _start_episode_boundary.
        self._episode_boundary_at: int | None = None
        # Asynchronous pipeline (async_sampling): the learner thread starts with the first training step.
        self._async_sampling = self.config.uses_async_sampling
        self._learner: MuZeroLearnerThread | None = None
        self._learner_held = False  # paused between train() calls
        self._weights_seq_no = 0  # the snapshot the env runners' sample requests carry (0: none yet)
        self._sample_request = _make_sample_request(None, 0, {}, list(self.replays))
        self._weights_at_updates = 0  # learner updates at the last weights snapshot
        self._weights_at_env_steps = 0
        self._async_runner_temperatures: dict[PolicyID, dict[int, float]] = {}
        self._async_last_step_end = time.perf_counter()
        self._async_fragments_per_runner: collections.Counter[int] = collections.Counter()
        # Policy reanalyse in Ray actors (num_reanalyse_workers > 0): built after everything else, so a failure above
        # leaves no actors behind.
        self._reanalyse: ReanalysePipeline | None = None
        if self.config.uses_reanalyse_workers:
            specs = {pid: (type(policy), policy.observation_space, policy.action_space, dict(policy.config))
                     for pid, policy in self.env_runner.policy_map.items() if pid in self.replays}
            workers = make_reanalyse_workers(self.config.num_reanalyse_workers,
                                             self.config.num_cpus_per_reanalyse_worker, specs, self.config.seed)
            self._reanalyse = ReanalysePipeline(workers, self.config.reanalyse_depth,
                                                self.config.reanalyse_policy_fraction)

    # ------------------------------------------------------------------ setup helpers
    def _seed_entropy(self, stream: int) -> list[int] | None:
        return None if self.config.seed is None else [int(self.config.seed), 1_000_003, stream]

    def _check_env_spaces(self) -> None:
        check_env_spaces(self.config, self.env_creator)

    def _check_replay_fits_in_memory(self) -> None:
        """Refuses a ``replay_capacity`` whose buffers (one per policy) would not fit in the available memory.

        numpy allocates lazily, so an oversized buffer would only fail hours later while filling; the estimate is
        measured on a small buffer of the same observation shape and dtype.
        """
        probe_capacity = 1024
        total = 0
        for policy in self.env_runner.policy_map.values():
            probe = self._make_replay(policy, capacity=probe_capacity)
            total += probe.nbytes / probe_capacity * self.config.replay_capacity
        available = psutil.virtual_memory().available
        if total > 0.8 * available:
            raise ValueError(
                f"Invalid MuZero config `replay_capacity`={self.config.replay_capacity}: the replay would need about "
                f"{total / 2**30:.1f} GiB ({total / self.config.replay_capacity:.0f} bytes per transition at this "
                f"observation size), but only {available / 2**30:.1f} GiB of memory is available; expected a capacity "
                f"below {int(0.8 * available / (total / self.config.replay_capacity)):,}."
            )

    def _make_replay(self, policy: Policy, capacity: int | None = None) -> SequenceReplayBuffer:
        return make_replay(self.config, policy.observation_space, policy.action_space, capacity)

    # ------------------------------------------------------------------ the loop
    def training_step(self) -> dict:
        """One iteration of MuZero's loop (paper Appendix B: self-play feeds the replay, the learner samples it).

        Phases: (after a checkpoint that ended the episodes in progress: reset the env runners, see
        :meth:`_start_episode_boundary`) -> sample (env runners act by search) -> store (stitch fragments into the
        sequence replay) -> replay + learn (as many updates as ``training_intensity`` asks for, once
        ``num_steps_sampled_before_learning_starts`` env steps are stored) -> update priorities (from the current
        network) -> sync weights and the learner-update count to the env runners.

        With ``async_sampling`` (the default with remote env runners) the phases overlap instead:
        :meth:`_training_step_async`.
        """
        if self._async_sampling:
            return self._training_step_async()
        if self._episode_boundary_at is not None:  # a checkpoint ended the episodes in progress
            self._cross_episode_boundary()
        # --- sample
        with self._timers[SAMPLE_TIMER]:
            batch = synchronous_parallel_sample(
                worker_set=self.env_runner_group, concat=True, sample_timeout_s=self.config.sample_timeout_s
            )
        if not batch:
            return {}
        batch = batch.as_multi_agent()
        env_steps = batch.env_steps()
        self._counters[NUM_ENV_STEPS_SAMPLED] += env_steps
        self._counters[NUM_AGENT_STEPS_SAMPLED] += batch.agent_steps()

        # --- store
        with self._timers["replay_add"]:
            for pid, policy_batch in batch.policy_batches.items():
                if pid in self.replays:
                    add_sample_batch_to_replay(self.replays[pid], policy_batch, use_q_max=self.config.use_q_max)

        # --- replay + learn + update priorities
        results: dict[str, Any] = {}
        num_updates = self._num_updates_due(env_steps)
        trainable = self.env_runner.get_policies_to_train()
        to_train = [pid for pid in self.replays if pid in trainable]
        learn_start = time.perf_counter()
        for _ in range(num_updates):
            for pid in to_train:
                results[pid] = self._learn_once(pid)
        learn_seconds = time.perf_counter() - learn_start

        # --- report
        for pid in to_train:
            results.setdefault(pid, {"learner_stats": {}})["muzero"] = self._muzero_metrics(
                pid, batch.policy_batches.get(pid), num_updates, learn_seconds, env_steps)
        # --- sync weights (and learner-update counts, which drive the temperature schedule on the runners)
        self._updates_since_sync += num_updates
        self._env_steps_since_sync += env_steps
        if (self._updates_since_sync >= self.config.send_weights_frequency
                and self._env_steps_since_sync >= self.config.weight_sync_frequency):
            with self._timers[SYNCH_WORKER_WEIGHTS_TIMER]:
                self.env_runner_group.sync_weights(
                    policies=to_train,
                    global_vars={
                        "timestep": self._counters[NUM_ENV_STEPS_SAMPLED],
                        "num_grad_updates_per_policy": {
                            pid: self.get_policy(pid).num_grad_updates for pid in to_train
                        },
                    },
                )
            self._updates_since_sync = self._env_steps_since_sync = 0
        return results

    def _muzero_metrics(self, pid: PolicyID, batch: SampleBatch | None, num_updates: int, learn_seconds: float,
                        env_steps: int) -> dict[str, Any]:
        """Replay, throughput and search metrics of one iteration (TensorBoard through Tune)."""
        replay = self.replays[pid]
        policy = self.get_policy(pid)
        sampled_total = max(self._counters[NUM_ENV_STEPS_SAMPLED], 1)
        sample_seconds = self._timers[SAMPLE_TIMER].mean if self._timers[SAMPLE_TIMER].count else 0.0
        metrics: dict[str, Any] = {
            "replay_size": len(replay),
            "replay_capacity": replay.capacity,
            "replay_window": replay.window,
            "replay_bytes": replay.nbytes,
            "replay_num_added": replay.num_added,
            "replay_mean_priority": float(replay.mean_priority) if len(replay) else 0.0,
            "num_updates_this_iter": num_updates,
            "learner_updates_per_s": num_updates / learn_seconds if num_updates and learn_seconds > 0 else 0.0,
            "env_steps_per_s": env_steps / sample_seconds if sample_seconds > 0 else 0.0,
            "replay_ratio": self._counters[NUM_ENV_STEPS_TRAINED] / sampled_total,
            "temperature": policy.current_temperature(),
            **self._runner_temperatures(pid),
            "num_nonfinite_updates": policy.num_nonfinite_updates,
        }
        if self._reanalyse is not None:
            metrics["reanalyse_target_lag"] = self._reanalyse.last_target_lag
            metrics["reanalyse_batches_in_flight"] = self._reanalyse.in_flight()
            metrics["reanalyse_worker_fallbacks"] = self._reanalyse.num_fallbacks
        if batch is not None and len(batch):
            metrics.update(search_statistics(batch, self.config.gamma))
        if self.config.debug:
            metrics["histograms"] = parameter_histograms(policy.model.named_parameters())
        return metrics

    def _runner_temperatures(self, pid: PolicyID) -> dict[str, float]:
        """``temperature_runner_<i>``: the acting temperature each env runner's policy uses now (asked of the
        runners themselves; runner 0 is the local one, which samples only when there are no remote runners).
        Asynchronous mode reports what each runner's last fragment came with (asking would wait for its sample)."""
        if self._async_sampling and self._async_runner_temperatures.get(pid):
            return {f"temperature_runner_{index}": temperature
                    for index, temperature in sorted(self._async_runner_temperatures[pid].items())}
        if self.env_runner_group.num_remote_env_runners() == 0:
            return {"temperature_runner_0": self.get_policy(pid).current_temperature()}
        temperatures = self.env_runner_group.foreach_env_runner(
            lambda runner: (runner.worker_index, runner.get_policy(pid).current_temperature()),
            local_env_runner=False)
        return {f"temperature_runner_{index}": temperature for index, temperature in temperatures}

    def _num_updates_due(self, new_env_steps: int) -> int:
        """Learner updates owed for ``new_env_steps``: ``training_intensity`` replayed positions per env step."""
        stored = min(len(r) for r in self.replays.values()) if self.replays else 0
        if stored < max(self.config.num_steps_sampled_before_learning_starts, 1):
            return 0
        if self.config.training_intensity is None:
            return 1
        self._updates_due += new_env_steps * self.config.training_intensity / self.config.train_batch_size
        num = int(self._updates_due)
        self._updates_due -= num
        return num

    def _learn_once(self, pid: PolicyID) -> dict:
        c = self.config
        replay = self.replays[pid]
        policy = self.get_policy(pid)
        beta = replay.beta  # annealed by sample(); a skipped update must not advance it

        def sample() -> dict:
            with self._timers[REPLAY_BUFFER_SAMPLE_TIMER]:
                return replay.sample(
                    c.train_batch_size, num_unroll_steps=c.num_unroll_steps, td_steps=c.td_steps,
                    discount=c.gamma, rng=self.replay_rng,
                    value_fn=policy.reanalyse_values if c.reanalyse_value else None,
                    td_decay_age=c.off_policy_correction_age,
                    with_unroll_obs=c.consistency_loss_weight > 0 or c.reanalyse_policy_fraction > 0,
                )

        if self._reanalyse is not None:  # the searches run in the reanalyse workers, batches ahead of this one
            with self._timers["reanalyse_policy"]:  # the learner's wait for them (+ sampling the batches it sends)
                train_batch = self._reanalyse.next_batch(
                    pid, sample, self.replay_rng, policy.target_network_version(), policy.target_network_weights,
                    policy.reanalyse_policies)
        else:
            train_batch = sample()
            if c.reanalyse_policy_fraction > 0:
                with self._timers["reanalyse_policy"]:
                    reanalyse_policy_targets(train_batch, policy.reanalyse_policies, c.reanalyse_policy_fraction,
                                             self.replay_rng)
        with self._timers[LEARN_ON_BATCH_TIMER]:
            out = policy.learn_on_replay_batch(train_batch)
        if out["finite"]:
            self._nonfinite_in_a_row = 0
            replay.update_priorities(
                train_batch[columns.TRAIN_INDICES], train_batch[columns.TRAIN_GENERATIONS], out["priorities"]
            )
            self._counters[NUM_AGENT_STEPS_TRAINED] += c.train_batch_size
            self._counters[NUM_ENV_STEPS_TRAINED] += c.train_batch_size
        else:  # undone by the policy (num_grad_updates unchanged); nothing of it counts, beta included
            replay.beta = beta
            self._nonfinite_in_a_row += 1
            if self._nonfinite_in_a_row >= c.max_nonfinite_updates_in_a_row:
                raise FloatingPointError(
                    f"{self._nonfinite_in_a_row} learner updates in a row of policy `{pid}` had a non-finite loss, "
                    "gradient or updated weights; they were undone, and training stops here instead of diverging. "
                    "Lower `lr`, set `grad_clip`, or check the env's observations and rewards for NaN/inf "
                    "(limit: `max_nonfinite_updates_in_a_row`)."
                )
        return {"learner_stats": out["learner_stats"]}

    # ------------------------------------------------------------------ the asynchronous pipeline
    def step(self) -> dict:
        """One ``train()`` iteration. Asynchronous mode: the learner thread runs from the start of the iteration to
        its end (through RLlib's episode-metrics collection) and is paused between iterations, so between ``train()``
        calls the policy is quiescent: acting, reading weights and saving see no half-applied update."""
        if not self._async_sampling:
            return super().step()
        self._start_learner()
        try:
            return super().step()
        finally:
            self._hold_learner()

    def _start_learner(self) -> None:
        if self._learner is None:
            self._learner = MuZeroLearnerThread(self._learn_all)
            self._learner.start()
        elif self._learner_held:
            self._learner.resume()
            self._learner_held = False
        self._learner.raise_if_failed()

    def _hold_learner(self) -> None:
        if self._learner is not None and not self._learner_held:
            self._learner.pause()
            self._learner_held = True

    def _learner_paused(self) -> contextlib.AbstractContextManager:
        """No learner update runs inside this block (a no-op without a learner thread)."""
        return self._learner.paused() if self._learner is not None else contextlib.nullcontext()

    def _learn_all(self) -> dict[PolicyID, dict]:
        """One learner update of every trained policy: the learner thread's unit of work."""
        trainable = self.env_runner.get_policies_to_train()
        return {pid: self._learn_once(pid) for pid in self.replays if pid in trainable}

    def max_learner_lag(self) -> int:
        """Learner updates owed beyond which new sample requests are held back (``max_learner_lag``; auto: the
        updates one fragment of every remote env runner owes under ``training_intensity``)."""
        c = self.config
        if c.max_learner_lag is not None:
            return c.max_learner_lag
        fragment_steps = c.get_rollout_fragment_length() * c.num_envs_per_env_runner
        per_fragment = 1.0 if c.training_intensity is None else (
            fragment_steps * c.training_intensity / c.train_batch_size)
        return max(1, math.ceil(per_fragment * max(1, c.num_env_runners)))

    def _training_step_async(self) -> dict:
        """One iteration of the asynchronous pipeline (``async_sampling``; docs/design.md).

        The phases of the synchronous loop, overlapping:

        - sample: every healthy remote env runner keeps ``max_requests_in_flight_per_env_runner`` sample requests
          in flight (RLlib's ``foreach_env_runner_async`` / ``fetch_ready_async_reqs``, as old-stack IMPALA); each
          request carries the latest weights snapshot, loaded by the runner before sampling when it is newer than
          its own, and returns the learner-update count of the weights the fragment was sampled with;
        - store: each fragment goes into the replay as it arrives (the learner paused for it) and owes the learner
          the updates ``training_intensity`` asks for;
        - replay + learn + update priorities: the learner thread runs the owed updates, and waits when it owes none
          (it never runs ahead of the replay ratio);
        - throttle: no new sample request goes out while the learner owes more than :meth:`max_learner_lag`;
        - sync weights: a new snapshot once ``send_weights_frequency`` updates and ``weight_sync_frequency`` env
          steps have passed since the last one.

        The iteration ends once it has stored as many fragments as there are healthy remote env runners.
        """
        learner = self._learner
        group = self.env_runner_group
        sample_timeout_s = self.config.sample_timeout_s
        batches: list[SampleBatch] = []
        staleness: list[int] = []
        updates_before, busy_before = learner.num_updates, learner.busy_seconds
        last_arrival = time.monotonic()
        with self._timers[SAMPLE_TIMER]:
            while group.num_healthy_remote_env_runners() > 0 and len(batches) < group.num_healthy_remote_env_runners():
                learner.raise_if_failed()
                if learner.owed <= self.max_learner_lag():
                    group.foreach_env_runner_async(self._sample_request, tag=SAMPLE_REQUEST_TAG)
                elif group.num_in_flight_async_reqs(SAMPLE_REQUEST_TAG) == 0:
                    self._counters["num_sample_requests_held_back"] += 1
                    learner.wait_for_progress(timeout=10 * _POLL_SECONDS)  # the learner catches up first
                    continue
                ready = group.fetch_ready_async_reqs(tags=SAMPLE_REQUEST_TAG, timeout_seconds=_POLL_SECONDS)
                if ready:
                    last_arrival = time.monotonic()
                    with learner.paused():
                        for runner_index, (batch, versions, temperatures) in ready:
                            staleness += self._store_fragment(runner_index, batch, versions, temperatures)
                            batches.append(batch.as_multi_agent())
                        self._maybe_snapshot_weights()
                elif sample_timeout_s and time.monotonic() - last_arrival > sample_timeout_s:
                    break  # as synchronous sampling past `sample_timeout_s`: RLlib counts an empty iteration
        learner.raise_if_failed()
        if not batches:
            return {}

        # --- report
        env_steps = sum(b.env_steps() for b in batches)
        num_updates = learner.num_updates - updates_before
        learn_seconds = learner.busy_seconds - busy_before
        now = time.perf_counter()
        wall_seconds, self._async_last_step_end = now - self._async_last_step_end, now
        results: dict[str, Any] = {}
        trainable = self.env_runner.get_policies_to_train()
        with self._learner_paused() if self.config.debug else contextlib.nullcontext():  # histograms read weights
            for pid in [pid for pid in self.replays if pid in trainable]:
                policy_batches = [b.policy_batches[pid] for b in batches if pid in b.policy_batches]
                metrics = self._muzero_metrics(pid, concat_samples(policy_batches) if policy_batches else None,
                                               num_updates, learn_seconds, env_steps)
                metrics.update({
                    "env_steps_per_s": env_steps / wall_seconds if wall_seconds > 0 else 0.0,
                    "learner_updates_owed": learner.owed,
                    "max_learner_lag": self.max_learner_lag(),
                    "learner_busy_fraction": min(1.0, learn_seconds / wall_seconds) if wall_seconds > 0 else 0.0,
                    "num_fragments_this_iter": len(batches),
                    "weights_staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
                    "weights_staleness_max": int(max(staleness)) if staleness else 0,
                })
                stats = learner.last_results.get(pid, {"learner_stats": {}})
                results[pid] = {"learner_stats": dict(stats["learner_stats"]), "muzero": metrics}
        return results

    def _store_fragment(self, runner_index: int, batch: SampleBatch, versions: dict[PolicyID, int],
                        temperatures: dict[PolicyID, float]) -> list[int]:
        """Stores one runner's fragment (the learner paused) and credits the learner; returns the staleness of
        each trained policy's weights it was sampled with (learner updates since)."""
        batch = batch.as_multi_agent()
        env_steps = batch.env_steps()
        self._counters[NUM_ENV_STEPS_SAMPLED] += env_steps
        self._counters[NUM_AGENT_STEPS_SAMPLED] += batch.agent_steps()
        self._async_fragments_per_runner[runner_index] += 1
        with self._timers["replay_add"]:
            for pid, policy_batch in batch.policy_batches.items():
                if pid in self.replays:
                    add_sample_batch_to_replay(self.replays[pid], policy_batch, use_q_max=self.config.use_q_max)
        num_updates = self._num_updates_due(env_steps)
        self._counters["num_learner_updates_credited"] += num_updates
        self._learner.credit(num_updates)
        for pid, temperature in temperatures.items():
            self._async_runner_temperatures.setdefault(pid, {})[runner_index] = temperature
        return [self.get_policy(pid).num_grad_updates - version for pid, version in versions.items()
                if pid in self.replays]

    def _maybe_snapshot_weights(self) -> None:
        """A new weights snapshot for the sample requests, when due (called with the learner paused)."""
        c = self.config
        updates = self._learner.num_updates
        env_steps = self._counters[NUM_ENV_STEPS_SAMPLED]
        if (updates - self._weights_at_updates < c.send_weights_frequency
                or env_steps - self._weights_at_env_steps < c.weight_sync_frequency):
            return
        trainable = self.env_runner.get_policies_to_train()
        to_train = [pid for pid in self.replays if pid in trainable]
        with self._timers[SYNCH_WORKER_WEIGHTS_TIMER]:
            weights = self.env_runner.get_weights(to_train)
            global_vars = {
                "timestep": env_steps,
                "num_grad_updates_per_policy": {pid: self.get_policy(pid).num_grad_updates for pid in to_train},
            }
            self._weights_seq_no += 1
            self._sample_request = _make_sample_request(ray.put(weights), self._weights_seq_no, global_vars,
                                                        list(self.replays))
        self._counters["num_weight_snapshots"] += 1
        self._weights_at_updates, self._weights_at_env_steps = updates, env_steps

    def _discard_sample_requests(self) -> None:
        """Waits for the sample requests in flight and drops their fragments (sampled before a restore)."""
        if self._async_sampling and self.env_runner_group.num_in_flight_async_reqs(SAMPLE_REQUEST_TAG):
            self.env_runner_group.fetch_ready_async_reqs(tags=SAMPLE_REQUEST_TAG,
                                                         timeout_seconds=self.config.sample_timeout_s)

    def restore_env_runners(self, env_runner_group: Any) -> list[int]:
        """RLlib's restart of failed env runners (``restart_failed_env_runners``), with the learner paused while a
        restarted runner copies the learner's policy state."""
        if self._learner is None or (
            env_runner_group.num_healthy_remote_env_runners() == env_runner_group.num_remote_env_runners()
        ):
            return super().restore_env_runners(env_runner_group)
        with self._learner.paused():
            return super().restore_env_runners(env_runner_group)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict:
        """RLlib's evaluation, with the learner paused while it runs (it copies the learner's weights)."""
        with self._learner_paused():
            return super().evaluate(*args, **kwargs)

    def cleanup(self) -> None:
        if self._learner is not None:
            self._learner.stop()
            self._learner = None
        if getattr(self, "_reanalyse", None) is not None:
            self._reanalyse.stop()
            self._reanalyse = None
        super().cleanup()

    # ------------------------------------------------------------------ checkpoints
    def __getstate__(self) -> dict:
        with self._learner_paused():  # no half-applied update in a checkpoint
            return self._getstate()

    def _getstate(self) -> dict:
        """The algorithm's state plus MuZero's: replays, generators, counters, and what exact resume needs.

        Exact resume (``rllib_muzero/runner_state.py``). Synchronous pipeline: the sampling env runners' episodes in
        progress travel when their envs' state pickles; otherwise this checkpoint is an episode boundary, in this run
        as in a restored one (:meth:`_start_episode_boundary`). Asynchronous pipeline: the runners go on sampling
        while this runs and a restored run's start new episodes, so the saved replay has its open episodes closed as
        truncated (this run's replay keeps them open: its runners continue them).
        """
        runners = [] if self._async_sampling else self._capture_runners()
        cut = [r["reason"] for r in runners if r["reason"]]
        if cut:
            if log_once("muzero_checkpoint_episode_boundary"):
                logger.info("MuZero: this checkpoint ends the episodes in progress, as truncated (resume stays exact): "
                            "an env runner's episodes cannot travel: %s.", cut[0])
            self._start_episode_boundary()  # before the replay's state is taken
            for runner in runners:
                runner["sampler"] = None
        state = super().__getstate__()
        state["muzero"] = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "replays": {pid: r.get_state(close_open_episodes=self._async_sampling) for pid, r in self.replays.items()}
            if self.config.store_buffer_in_checkpoints else {},
            "replay_rng_state": self.replay_rng.bit_generator.state,
            # Asynchronous mode: plus the updates credited to the learner thread and not yet run.
            "updates_due": self._updates_due + (self._learner.owed if self._learner is not None else 0),
            "nonfinite_in_a_row": self._nonfinite_in_a_row,
            "updates_since_sync": self._updates_since_sync,
            "env_steps_since_sync": self._env_steps_since_sync,
            "runners": runners,  # capture_runner() of each sampling env runner (synchronous pipeline)
            "episode_boundary_at": self._episode_boundary_at,
        }
        return state

    def __setstate__(self, state: dict) -> None:
        extra = state.get("muzero")
        if extra is None:
            raise ValueError("This checkpoint holds no MuZero state (no `muzero` entry): it was not written by "
                             "rllib-muzero's MuZero algorithm.")
        version = extra.get("format_version", 0)
        if version > CHECKPOINT_FORMAT_VERSION:
            raise ValueError(f"This checkpoint has MuZero format version {version}; this rllib-muzero reads versions "
                             f"<= {CHECKPOINT_FORMAT_VERSION}. Upgrade rllib-muzero to load it.")
        with self._learner_paused():
            self._discard_sample_requests()
            self._setstate(state, extra)

    def _setstate(self, state: dict, extra: dict) -> None:
        super().__setstate__(state)
        for pid, replay_state in extra["replays"].items():
            if pid in self.replays:
                self.replays[pid].set_state(replay_state)
        self.replay_rng.bit_generator.state = extra["replay_rng_state"]
        self._updates_due = extra["updates_due"]
        self._nonfinite_in_a_row = extra.get("nonfinite_in_a_row", 0)
        self._updates_since_sync = extra.get("updates_since_sync", 0)
        self._env_steps_since_sync = extra.get("env_steps_since_sync", 0)
        continued = self._restore_runners([] if self._async_sampling else extra.get("runners", []))
        self._episode_boundary_at = extra.get("episode_boundary_at")
        if not continued:
            # The runners start new episodes (asynchronous pipeline, episode boundary, a checkpoint from before exact
            # resume, or runners unlike the saved ones): no open episode of the replay will ever be continued.
            for replay in self.replays.values():
                replay.close_open_episodes()
        if self._learner is not None:
            self._learner.take_owed()  # the restored `updates_due` carries the debt
        if self._async_sampling:  # the runners hold the restored weights: no snapshot from before the restore
            self._weights_seq_no += 1
            self._sample_request = _make_sample_request(None, self._weights_seq_no, {}, list(self.replays))
            self._weights_at_updates = self._learner.num_updates if self._learner is not None else 0
            self._weights_at_env_steps = self._counters[NUM_ENV_STEPS_SAMPLED]

    # ------------------------------------------------------------------ exact resume (runner_state.py)
    def _capture_runners(self) -> list[dict[str, Any]]:
        """:func:`~rllib_muzero.runner_state.capture_runner` of each sampling env runner (synchronous pipeline).

        Without remote runners the local runner samples; its policy is the learner's, whose weights and optimizer
        travel in RLlib's policy state. Remote runners send their weights too: they lag the learner's by up to
        ``send_weights_frequency`` updates.
        """
        group = self.env_runner_group
        if group.num_remote_env_runners() == 0:
            return [capture_runner(self.env_runner, with_weights=False)]
        return group.foreach_env_runner(functools.partial(capture_runner, with_weights=True), local_env_runner=False)

    def _restore_runners(self, runners: list[dict[str, Any]]) -> bool:
        """Puts :meth:`_capture_runners`' output back into the env runners of the same index; returns whether every
        sampling runner took its episodes in progress (then the replay's open episodes are continued)."""
        if not runners:
            return False
        by_index = {runner["worker_index"]: runner for runner in runners}
        group = self.env_runner_group
        if group.num_remote_env_runners() == 0:
            return 0 in by_index and restore_runner(self.env_runner, by_index[0])
        continued = group.foreach_env_runner(functools.partial(_restore_runner_by_index, by_index),
                                             local_env_runner=False)
        return len(continued) == len(by_index) and all(continued)

    def _start_episode_boundary(self) -> None:
        """Makes this checkpoint an episode boundary, the rule when the runners' episodes cannot travel.

        A restored run cannot continue the episodes in progress, so this run stops them too: their open tails in the
        replay are closed as truncated now (the value targets bootstrap there, as at a time limit; no tail is left
        waiting), and before the next sample (:meth:`_cross_episode_boundary`) every sampling runner drops them and
        resets its envs and re-seeds its acting generators from the config seed and the env steps sampled now, which a
        restored run reads from the checkpoint and repeats. Both runs then sample the same data.
        """
        self._episode_boundary_at = int(self._counters[NUM_ENV_STEPS_SAMPLED])
        for replay in self.replays.values():
            replay.close_open_episodes()

    def _cross_episode_boundary(self) -> None:
        """Resets the sampling env runners as :meth:`_start_episode_boundary` scheduled (before the next sample)."""
        at, self._episode_boundary_at = self._episode_boundary_at, None
        base = self._seed_entropy(stream=2)
        entropy = None if base is None else [*base, at]
        group = self.env_runner_group
        group.foreach_env_runner(functools.partial(episode_boundary, entropy=entropy),
                                 local_env_runner=group.num_remote_env_runners() == 0)

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Writes the checkpoint crash-safely (:func:`replace_checkpoint_dir`): into a hidden sibling directory,
        then renamed into place, so that a crash at any instant leaves the complete old or new checkpoint at
        ``checkpoint_dir``, or recoverable for it by :func:`recover_checkpoint_dir` (which every later save, the
        ``rllib-muzero evaluate`` loader, :meth:`from_checkpoint` and :meth:`restore` run). The save also removes
        what interrupted saves of gone processes left in the same parent directory.

        ``Algorithm.from_checkpoint`` (RLlib's base class) reads the path as it is: after a crash between the two
        renames that swap an old checkpoint for a new one it finds none; ``MuZero.from_checkpoint`` recovers it.
        """
        def write(directory: str) -> None:
            with self._learner_paused():  # policy checkpoints are written beside the state
                super(MuZero, self).save_checkpoint(directory)

        replace_checkpoint_dir(checkpoint_dir, write)

    @classmethod
    def from_checkpoint(cls, path: Any, filesystem: Any = None, **kwargs: Any) -> Algorithm:
        """RLlib's ``Algorithm.from_checkpoint``, after recovering a local checkpoint directory whose save was
        interrupted (:func:`recover_checkpoint_dir`). A relative local path is taken from the working directory
        (RLlib's own would read it as a URI without a scheme and fail)."""
        if filesystem is None and isinstance(path, (str, os.PathLike)) and "://" not in str(path):
            path = os.path.abspath(recover_checkpoint_dir(path))
        return super().from_checkpoint(path, filesystem, **kwargs)

    def restore(self, checkpoint_path: Any) -> None:
        """Tune's ``Trainable.restore``, after recovering a local checkpoint directory whose save was interrupted
        (:func:`recover_checkpoint_dir`)."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and "://" not in str(checkpoint_path):
            checkpoint_path = os.path.abspath(recover_checkpoint_dir(checkpoint_path))
        return super().restore(checkpoint_path)


def _restore_runner_by_index(by_index: dict[int, dict[str, Any]], runner: Any) -> bool:
    """:func:`~rllib_muzero.runner_state.restore_runner` with the capture of ``runner``'s own index, if any."""
    return runner.worker_index in by_index and restore_runner(runner, by_index[runner.worker_index])


def _make_sample_request(weights_ref: ray.ObjectRef | None, weights_seq_no: int, global_vars: dict,
                         policy_ids: list[PolicyID]) -> Any:
    """The asynchronous sample request an env runner executes: load the weights snapshot ``weights_seq_no`` when
    newer than the runner's (RLlib's ``weights_seq_no`` of ``RolloutWorker.set_weights``), sample one fragment, and
    return ``(batch, {pid: learner updates of the weights sampled with}, {pid: acting temperature})``."""

    def sample_request(runner: Any) -> tuple[SampleBatch, dict[PolicyID, int], dict[PolicyID, float]]:
        if weights_ref is not None and runner.weights_seq_no != weights_seq_no:
            runner.set_weights(ray.get(weights_ref), global_vars, weights_seq_no=weights_seq_no)
        batch = runner.sample()
        policies = {pid: runner.policy_map[pid] for pid in policy_ids if pid in runner.policy_map}
        versions = {pid: int(policy.num_grad_updates) for pid, policy in policies.items()}
        temperatures = {pid: policy.current_temperature() for pid, policy in policies.items()}
        return batch, versions, temperatures

    return sample_request


def make_replay(config: MuZeroConfig, observation_space: gym.Space, action_space: gym.Space,
                capacity: int | None = None) -> SequenceReplayBuffer:
    """The sequence replay buffer a policy with these spaces gets under ``config`` (``replay_capacity`` by default)."""
    capacity = capacity or config.replay_capacity
    window_step = config.replay_window_step
    return SequenceReplayBuffer(
        capacity=capacity,
        obs_shape=observation_space.shape,
        obs_dtype=observation_space.dtype,
        num_actions=int(action_space.n),
        alpha=config.prioritized_replay_alpha,
        beta=config.prioritized_replay_beta,
        beta_increment_per_sampling=config.beta_increment_per_sampling,
        epsilon=config.prioritized_replay_eps,
        window_step=None if window_step is None else min(window_step, capacity),
    )


def check_env_spaces(config: AlgorithmConfig, env_creator: Any = None) -> None:
    """Builds one env locally to check its spaces, so a bad env fails before Ray starts any worker.

    Checks the action space (Discrete) and, for a Dict observation with an action mask (``config.action_mask_key``),
    the mask's shape (one entry per action) and the one other entry, as the policy would on every env runner.
    Multi-agent envs are skipped: spaces are per policy and each MuZeroTorchPolicy checks its own at build time.
    """
    if config.is_multi_agent:
        return
    action_space, observation_space = config.action_space, config.observation_space
    if action_space is None or observation_space is None:
        if env_creator is None:
            if config.env is None:
                return
            _, env_creator = MuZero._get_env_id_and_creator(config.env, config)
        env = env_creator(EnvContext(config.env_config, worker_index=0, num_workers=0))
        try:
            action_space = env.action_space if action_space is None else action_space
            observation_space = env.observation_space if observation_space is None else observation_space
        finally:
            env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"MuZero needs a Discrete action space; env `{config.env}` has {action_space!r}. "
                         "Wrap the env to discretise its actions first.")
    mask_key = getattr(config, "action_mask_key", None) or "action_mask"
    try:
        split_action_mask_space(observation_space, mask_key, int(action_space.n))
    except ValueError as error:
        raise ValueError(f"Env `{config.env}` cannot be played by MuZero: {error}") from None


def add_sample_batch_to_replay(replay: SequenceReplayBuffer, batch: SampleBatch, *, use_q_max: bool = False) -> None:
    """Adds every episode fragment of an RLlib sample batch to the sequence replay (stitched by episode id).

    Multi-agent batches hold several agents per episode: the fragment key combines episode id and agent index.
    With ``use_q_max`` the stored bootstrap value is max_a Q(s, a) of the search instead of its root value.
    """
    value_column = columns.SEARCH_Q_MAX if use_q_max else columns.SEARCH_ROOT_VALUE
    for fragment in batch.split_by_episode():
        agent = int(fragment[SampleBatch.AGENT_INDEX][0]) if SampleBatch.AGENT_INDEX in fragment else 0
        replay.add_fragment(
            episode_key(fragment[SampleBatch.EPS_ID][0], agent),
            obs=fragment[SampleBatch.OBS],
            actions=fragment[SampleBatch.ACTIONS],
            rewards=fragment[SampleBatch.REWARDS],
            root_values=fragment[value_column],
            search_policies=fragment[columns.SEARCH_POLICY],
            terminated=bool(fragment[SampleBatch.TERMINATEDS][-1]),
            truncated=bool(fragment[SampleBatch.TRUNCATEDS][-1]),
        )


# ---------------------------------------------------------------------------------------------------------------------
# Crash-safe checkpoint directories: the protocol of MuZero.save_checkpoint and of the checkpoint loaders.
#
# A checkpoint directory cannot be replaced in one atomic step (rename() only replaces an EMPTY directory), so a save
# over an existing checkpoint FINAL goes through hidden siblings `.FINAL.<kind>-<owner>-<token>` in the same parent:
#
#   1. write the new checkpoint into  .FINAL.partial-…    (incomplete until the next step; never read)
#   2. rename partial -> .FINAL.ready-…                   (complete new checkpoint)
#   3. rename FINAL   -> .FINAL.previous-…                (complete old checkpoint; skipped when FINAL is empty/absent)
#   4. rename ready   -> FINAL                            (onto an empty FINAL directly, atomically)
#   5. rename previous -> .FINAL.trash-…, then delete it   (trash is never read: a half-deleted tree is harmless)
#
# Invariant: at every instant FINAL holds a complete checkpoint (old or new), or it is absent/empty and a complete
# `ready` (new) or `previous` (old) sibling exists. recover_checkpoint_dir() restores the second case by renaming the
# newest complete sibling (ready before previous) back to FINAL; readers call it (checkpoints.py: `rllib-muzero
# evaluate`; MuZero.from_checkpoint, MuZero.restore) and every save calls it before writing. Leftovers of
# interrupted saves are removed at the next save into the same parent (any checkpoint name there), but only those of
# writers that are gone: the owner tag in the name is a host tag and a pid, and a leftover of a live process on this
# host, or of another host, is left alone (it may be a save in progress). Readers never delete (they cannot tell a
# killed save from a running one). The guarantee covers a crashed or killed process (exception, SIGKILL, OOM), not
# a power loss: nothing is fsync'ed.
_LEFTOVER_NAME = re.compile(r"\.(?P<name>.+)\.(?P<kind>partial|ready|previous|trash)"
                            r"(?:-(?P<host>[0-9a-f]{4})-(?P<pid>\d+))?-(?P<token>[0-9a-z_]+)")  # no owner: pre-1.0
_HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"


def _holds_checkpoint(path: pathlib.Path) -> bool:
    """A directory with something in it (the protocol never leaves an incomplete checkpoint at a final path)."""
    try:
        return path.is_dir() and any(path.iterdir())
    except OSError:
        return False


def _leftovers(parent: pathlib.Path) -> list[tuple[pathlib.Path, re.Match]]:
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    return [(p, m) for p in entries if (m := _LEFTOVER_NAME.fullmatch(p.name)) is not None]


def is_interrupted_save(name: str) -> bool:
    """Whether ``name`` is a hidden sibling of a checkpoint written by the save protocol (never a checkpoint)."""
    return _LEFTOVER_NAME.fullmatch(name) is not None


def _abandoned(match: re.Match) -> bool:
    """Left by a writer that is gone: this process (saves run one at a time), a dead process on this host, or an
    old-style name without an owner. Another host's leftovers are never judged gone."""
    if match["host"] is None:
        return True
    if match["host"] != _HOST_TAG:
        return False
    pid = int(match["pid"])
    return pid == os.getpid() or not psutil.pid_exists(pid)


def _recovery_candidates(final: pathlib.Path) -> list[pathlib.Path]:
    """Complete siblings that may stand for ``final``: ``ready`` (new) before ``previous`` (old), newest first."""
    found = [(p, m["kind"]) for p, m in _leftovers(final.parent)
             if m["name"] == final.name and m["kind"] in ("ready", "previous") and _holds_checkpoint(p)]

    def newest_first(item: tuple[pathlib.Path, str]) -> tuple[int, float]:
        try:
            mtime = item[0].stat().st_mtime
        except OSError:
            mtime = 0.0
        return (0 if item[1] == "ready" else 1, -mtime)

    return [p for p, _ in sorted(found, key=newest_first)]


def _move_into_place(source: pathlib.Path, final: pathlib.Path) -> None:
    """Renames the complete checkpoint ``source`` to ``final``, which must be absent or an empty directory."""
    try:
        os.rename(source, final)
    except FileNotFoundError:
        if not source.exists() and _holds_checkpoint(final):
            return  # a concurrent reader's recovery moved it there first
        raise
    except OSError:
        if final.is_dir() and not _holds_checkpoint(final):  # platforms that do not rename onto an empty directory
            final.rmdir()
            os.rename(source, final)
        else:
            raise


def recover_checkpoint_dir(path: str | os.PathLike) -> str:
    """Returns the path to read the checkpoint ``path`` from, after putting back an interrupted save's checkpoint.

    When ``path`` is absent or empty and a save into it was interrupted between its renames, the newest complete
    hidden sibling (the new checkpoint if it was complete, else the old one) is renamed back to ``path``. Where that
    rename is impossible (read-only storage), the sibling's own path is returned to be read in place. In every other
    case ``path`` is returned unchanged (also when it holds no checkpoint and nothing can be recovered: the caller's
    own error message then applies). Never deletes anything.
    """
    final = pathlib.Path(path)
    if _holds_checkpoint(final):
        return str(path)
    for candidate in _recovery_candidates(final):
        try:
            _move_into_place(candidate, final)
            logger.warning("Checkpoint %s was missing after an interrupted save; recovered it from %s.", final,
                           candidate.name)
            return str(path)
        except OSError:
            if _holds_checkpoint(final):
                return str(path)
            if _holds_checkpoint(candidate):
                return str(candidate)
    return str(path)


def _discard(path: pathlib.Path, match: re.Match) -> None:
    """Deletes a leftover; a complete one (ready/previous) is first renamed to ``trash``, so that a deletion cut
    short never leaves a half-deleted tree under a name recovery would read."""
    if match["kind"] in ("ready", "previous"):
        trash = path.with_name(f".{match['name']}.trash-{_owner_token()}")
        os.rename(path, trash)
        path = trash
    shutil.rmtree(path, ignore_errors=True)


def _owner_token() -> str:
    return f"{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def clean_interrupted_saves(parent: str | os.PathLike) -> None:
    """Recovers, then removes, what interrupted saves of the gone writers left in the directory ``parent``.

    For each checkpoint name with leftovers: when the checkpoint itself is missing or empty, it is recovered first
    (:func:`recover_checkpoint_dir`); the leftovers are deleted only while a complete checkpoint stands at the name.
    """
    parent = pathlib.Path(parent)
    leftovers = [(p, m) for p, m in _leftovers(parent) if _abandoned(m)]
    for name in sorted({m["name"] for _, m in leftovers}):
        final = parent / name
        if any(m["kind"] in ("ready", "previous") for p, m in leftovers if m["name"] == name):
            recover_checkpoint_dir(final)
        for path, match in leftovers:
            if match["name"] != name or not path.exists():
                continue
            if match["kind"] in ("ready", "previous") and not _holds_checkpoint(final):
                continue  # the only copy: kept
            try:
                _discard(path, match)
            except OSError as e:
                logger.warning("Could not remove %s, left by an interrupted checkpoint save: %s", path, e)


def replace_checkpoint_dir(checkpoint_dir: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Writes a checkpoint with ``write(directory)`` and puts it at ``checkpoint_dir``, replacing what was there, so
    that a crash at any instant leaves a complete checkpoint, old or new, at the path or recoverable for it (the
    protocol: steps 1-5 in the comment above). An exception in ``write`` leaves the old checkpoint in place and no
    leftover."""
    final = pathlib.Path(checkpoint_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_interrupted_saves(final.parent)  # also recovers `final` itself
    token = _owner_token()
    partial = final.with_name(f".{final.name}.partial-{token}")
    partial.mkdir()
    try:
        write(str(partial))                                                     # 1
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    ready = final.with_name(f".{final.name}.ready-{token}")
    os.rename(partial, ready)                                                   # 2
    previous = None
    try:
        if _holds_checkpoint(final):
            previous = final.with_name(f".{final.name}.previous-{token}")
            os.rename(final, previous)                                          # 3
        _move_into_place(ready, final)                                          # 4
    except BaseException:
        with contextlib.suppress(OSError):
            recover_checkpoint_dir(final)  # best effort; otherwise the next save or load recovers it
        raise
    if previous is not None:
        with contextlib.suppress(OSError):
            _discard(previous, _LEFTOVER_NAME.fullmatch(previous.name))          # 5


def recover_checkpoints_in(parent: str | os.PathLike) -> None:
    """:func:`recover_checkpoint_dir` for every checkpoint in the directory ``parent`` whose save was interrupted
    (e.g. a Tune trial directory before its latest checkpoint is looked up). Never deletes anything."""
    parent = pathlib.Path(parent)
    for name in sorted({m["name"] for _, m in _leftovers(parent) if m["kind"] in ("ready", "previous")}):
        recover_checkpoint_dir(parent / name)
