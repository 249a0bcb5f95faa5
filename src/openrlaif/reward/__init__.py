"""Reward models: Bradley-Terry scorers of (conversation, response)."""
