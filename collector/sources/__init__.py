"""The ways readings come in: one folder per transport, each a ``base.Source``.

A source decodes what it receives into items and hands them to the sink
(``collector.ingest.sink``); it never touches the buffer, the writer or the tables.
``registry`` builds the sources the settings call for.
"""
