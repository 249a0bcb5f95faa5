"""What the trainers share (the trainers themselves are stages: ``stages.dpo``, ``stages.ppo``, ``stages.rloo``):
pure losses and advantages, RL rollouts and reward sources, and the over-optimisation monitor."""
