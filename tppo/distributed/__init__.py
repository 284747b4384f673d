"""Scale-out: the trainer's roles as remote workers (``distributed.*`` in the config).

- :mod:`tppo.distributed.fsdp`: sharding the models of one training process with FSDP2.
- :mod:`tppo.distributed.ray_roles`: Ray actors for rollout and training, and the groups the trainer
  drives in their place (a rollout group is an :class:`~tppo.engines.base.Engine`, a learner group a
  :class:`~tppo.learner.LearnerRole`). Needs the ``distributed`` extra (``pip install 'tppo[distributed]'``).
"""
