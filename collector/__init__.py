"""energy-collector: readings from MQTT and HTTP into PostgreSQL, exactly once.

The path of a reading, and where each step lives:

1. received: ``ingest.mqtt_client`` (the broker connection) and ``ingest.mqtt_source``, or
   ``ingest.http_source`` (HTTP ingest, called by the API);
2. validated: ``ingest.readings`` (pure);
3. buffered: ``ingest.buffer`` (bounded; sources wait when it is full);
4. written and committed: ``ingest.writer`` with ``ingest.store`` (one statement a batch);
5. acknowledged: the chunk's ``on_commit`` (PUBACKs, or the HTTP answer).

``service`` runs the pipeline, ``process`` wires it with the API (the composition root),
``cli`` is the command line. ``db`` keeps the schema (migrations, partitions); ``tools``
holds the commands that are not the daemon (check, import, simulate, demo).
"""
