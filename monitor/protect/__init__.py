"""Protective orders: the order contract, the executor, the backstop, the kill switches."""
