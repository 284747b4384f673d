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
from tppo.algorithms.aggregation import global_token_mean, shard_rows
from tppo.algorithms.losses import PolicyLossOutput, ValueLossOutput, policy_loss, value_loss
from tppo.algorithms.masks import TokenMasks, select_tokens
from tppo.algorithms.stats import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageEstimator",
    "PolicyLossOutput",
    "TokenMasks",
    "ValueLossOutput",
    "egae",
    "explained_variance",
    "gae",
    "get_advantage_estimator",
    "global_token_mean",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "monte_carlo_returns",
    "outcome_rewards",
    "policy_loss",
    "register_advantage_estimator",
    "select_tokens",
    "shard_rows",
    "value_loss",
]
