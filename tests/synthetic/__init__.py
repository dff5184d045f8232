"""Builders of the small random models and files the tests need. Nothing here downloads."""
