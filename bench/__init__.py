"""Benchmarks, each printing a ratio against a baseline measured in the same run.

Run them as modules (``uv run python -m bench.<name>``, or all with ``uv run just bench``): run as a
script, a file's own folder comes first on ``sys.path``, and ``bench/email.py`` would hide the
standard library's ``email`` package from every benchmark.
"""
