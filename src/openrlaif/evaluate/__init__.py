"""Evaluation maths and tools shared by the eval stage, the monitor and `rlaif judge-eval`: win rates with
bootstrap CIs and length control, the over-optimisation rule, judge agreement with people, the red team."""
