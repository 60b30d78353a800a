"""Commands that are not the daemon: check, import, simulate, demo, and local services.

Each exposes ``run(settings, ...) -> int`` for ``collector.cli``; they use the pipeline's
and the schema's modules, never the other way round.
"""
