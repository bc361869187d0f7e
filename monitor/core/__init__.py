"""The pure core: frozen data, margin math, stress, rules, action planning.

No asyncio, ccxt, clock or logger here (tests/test_core_purity.py enforces it); time
comes in as an argument."""
