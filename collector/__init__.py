"""energy-collector: readings from MQTT and HTTP into PostgreSQL, exactly once.

The path of a reading, and where each step lives:

1. received and decoded by a source (``sources``): ``sources.mqtt`` (the broker session,
   the topic contract) or ``sources.http`` (HTTP ingest, driven by the API);
2. handed to the sink (``ingest.sink``), which validates it (``ingest.validation``, pure)
   and groups the readings by stream (``ingest.streams``: the catalogue of what each
   stream is and where it is stored);
3. buffered: ``ingest.buffer`` (bounded; sources wait when it is full);
4. written and committed: ``ingest.writer`` with ``ingest.store`` (the batch statement)
   and ``ingest.booking`` (cumulative registers);
5. acknowledged: the submission's ``on_commit`` (PUBACKs, or the HTTP answer).

``service`` runs the pipeline and its sources, ``process`` wires it with the API (the
composition root), ``cli`` is the command line. ``db`` keeps the schema (migrations,
partitions); ``readmodel`` is how the analytics read energy (the API and the alert rules);
``alerts`` evaluates and delivers device alerts; ``tools`` holds the commands that are not
the daemon (check, import, simulate, demo).
"""
