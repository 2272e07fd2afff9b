"""Guidance strategies: combine positive / negative conditioning predictions into one velocity."""
