"""Helpers shared by tests in several folders (import as `helpers.<module>`)."""
