"""Human audit desk: a queue of AI labels for people to check, their verdicts, and the agreement figures."""
