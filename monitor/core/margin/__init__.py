"""One account's margin state: the report, valuation, liquidation prices, the tick ledger."""
