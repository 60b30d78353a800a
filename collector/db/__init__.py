"""The schema's upkeep: preparing the database, migrations, partitions, error diagnosis.

The SQL itself is in ``sql/`` at the top of the repository (shipped as ``collector.sql``).
"""
