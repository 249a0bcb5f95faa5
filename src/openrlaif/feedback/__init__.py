"""The auxiliary AI: constitutions, judges, labelling."""
