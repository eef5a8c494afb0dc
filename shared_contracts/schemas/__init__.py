"""Typed schemas of the contract, one module per domain (``common`` now; fleet, deployments … later)."""
