"""Helpers for testing the module against real Synapse homeserver processes."""
