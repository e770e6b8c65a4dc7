"""Every batch key MuZero uses, in one place.

The policy writes the ``SEARCH_*`` columns into RLlib's sample batches (declared as view requirements so the sampler
keeps them); the replay buffer's :meth:`~rllib_muzero.replay.SequenceReplayBuffer.sample` returns a training batch with
the ``TRAIN_*`` keys, which :func:`rllib_muzero.losses.muzero_loss` consumes. Shapes use ``B`` (batch), ``K``
(``num_unroll_steps``) and ``A`` (number of actions).
"""

# Written by the policy during acting (one row per env step).
SEARCH_ROOT_VALUE = "muzero_root_value"  # (B,) float32: search value nu_t of the root (paper: root.value())
SEARCH_POLICY = "muzero_search_policy"  # (B, A) float32: normalised root visit counts pi_t
SEARCH_Q_MAX = "muzero_q_max"  # (B,) float32: max_a Q(s_t, a) over visited root children (for use_q_max)
SEARCH_MAX_DEPTH = "muzero_search_depth"  # (B,) int32: deepest node reached by the search

# Set by an env wrapper in a step's info dict when the env executed another action than the agent's (avoid_repeat);
# the policy's postprocessing writes it into the ACTIONS column, so the replay trains the dynamics on what happened.
INFO_EXECUTED_ACTION = "executed_action"
# RLlib's INFOS column holds, at row t, the info returned with o_t (from the step before); this column holds the info
# of the step that took a_t (INFOS shifted by +1), where INFO_EXECUTED_ACTION for a_t is found.
STEP_INFOS = "muzero_step_infos"

# Training batch built by the replay buffer (one row per sampled position t).
TRAIN_OBS = "obs"  # (B, *obs_shape): o_t
TRAIN_ACTIONS = "actions"  # (B, K) int64: a_t .. a_{t+K-1} (random past the episode end)
TRAIN_TARGET_VALUE = "target_value"  # (B, K+1) float32: z_{t+k}
TRAIN_TARGET_REWARD = "target_reward"  # (B, K+1) float32: u_{t+k} (column 0 unused)
TRAIN_TARGET_POLICY = "target_policy"  # (B, K+1, A) float32: pi_{t+k}
TRAIN_VALUE_MASK = "value_mask"  # (B, K+1) float32: 1 where the value target is defined
TRAIN_REWARD_MASK = "reward_mask"  # (B, K+1) float32: 1 where the reward target is defined (column 0 is 0)
TRAIN_POLICY_MASK = "policy_mask"  # (B, K+1) float32: 1 where the policy target is defined
TRAIN_UNROLL_OBS = "unroll_obs"  # (B, K, *obs_shape): o_{t+1} .. o_{t+K} (consistency loss; repeats past the data)
TRAIN_UNROLL_OBS_MASK = "unroll_obs_mask"  # (B, K) float32: 1 where o_{t+k} exists
TRAIN_WEIGHTS = "weights"  # (B,) float32: importance-sampling weights (N P(i))^-beta / max
TRAIN_INDICES = "indices"  # (B,) int64: replay slots of the sampled positions
TRAIN_GENERATIONS = "generations"  # (B,) int64: write generation of those slots (stale priority writes are dropped)
