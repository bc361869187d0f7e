"""What is particular to each venue: one module per venue (its quirks, its docs cited), found
by ccxt id in `registry.py`; the shared readers and hooks (`base.py`), the error vocabulary
(`errors.py`) and order parameters (`orders.py`)."""
