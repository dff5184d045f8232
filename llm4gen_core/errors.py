"""Errors the pack raises on bad input: typed, and worded for the person who has to fix it.

Each is a ``ValueError`` too, so callers that only know the standard type still catch them.
"""


class LLM4GENError(ValueError):
    """Base class: something the user gave us (a file, a tensor, a setting) is not usable."""


class CheckpointError(LLM4GENError):
    """A weights file cannot be used: unreadable, unsafe, or not the model it claims to be."""

    def __init__(self, path, problem: str, hint: str = ""):
        self.path = str(path)
        self.problem = problem
        message = f"{self.path}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class FeatureMismatchError(LLM4GENError):
    """Features handed to the Cross-Adapter do not fit it or each other (width, batch, rank)."""


class LLMLoadError(LLM4GENError):
    """An LLM folder or file cannot be loaded as a text encoder."""


class DataError(LLM4GENError):
    """Training data cannot be used: a data folder or shard set that is missing, empty or mostly bad."""
