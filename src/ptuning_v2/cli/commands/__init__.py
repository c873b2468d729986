"""Sub-commands of ``ptv2``: every module here with ``add_parser`` is one command."""
