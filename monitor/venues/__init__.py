"""What is particular to each venue: errors, order parameters, quirks (doc cited)."""
