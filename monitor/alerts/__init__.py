"""The alert pipeline (rules -> outbox -> channels), messages, signed commands."""
