"""The pure maths of T-PPO: advantage estimators, returns, losses, token masks, masked statistics.

Pure tensor functions: no models, engines or config objects, no hidden state, inputs never modified.
Shapes: ``B`` responses, ``T`` tokens; masks are ``torch.bool`` with True = use this token.
"""

from tppo.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    egae,
    gae,
    get_advantage_estimator,
    monte_carlo_returns,
    outcome_rewards,
    register_advantage_estimator,
)
from tppo.algorithms.aggregation import global_token_mean, sequence_token_weights, shard_rows
from tppo.algorithms.groups import degenerate_groups, group_advantages, overlong_penalty
from tppo.algorithms.losses import (
    DecoupledPolicyLossOutput,
    PolicyLossOutput,
    ValueLossOutput,
    decoupled_policy_loss,
    kl_k3,
    policy_loss,
    value_loss,
)
from tppo.algorithms.masks import TokenMasks, select_tokens
from tppo.algorithms.stats import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageEstimator",
    "DecoupledPolicyLossOutput",
    "PolicyLossOutput",
    "TokenMasks",
    "ValueLossOutput",
    "decoupled_policy_loss",
    "degenerate_groups",
    "egae",
    "explained_variance",
    "gae",
    "get_advantage_estimator",
    "global_token_mean",
    "group_advantages",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "monte_carlo_returns",
    "outcome_rewards",
    "overlong_penalty",
    "policy_loss",
    "register_advantage_estimator",
    "select_tokens",
    "sequence_token_weights",
    "shard_rows",
    "value_loss",
]
