"""The decision service: personalization points, decisions, qualification and the decision log."""
