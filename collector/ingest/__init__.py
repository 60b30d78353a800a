"""The ingest pipeline, in the order a reading passes through it.

``broker`` (connection settings) and ``mqtt_client`` -> ``mqtt_source`` / ``http_source``
-> ``readings`` (validation) -> ``buffer`` -> ``writer`` -> ``store`` -> commit ->
``Chunk.on_commit`` (acknowledge). Nothing here imports the API or the tools.
"""
