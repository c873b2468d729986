"""Conversions between ptuning-v2 prompts and other libraries' adapter formats."""
