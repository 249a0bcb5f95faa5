"""Policy optimisation: DPO now (PPO and RLOO follow)."""
