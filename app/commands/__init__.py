"""The commands of `python -m app` (see ``app/__main__.py``)."""
