"""The ingest core: it knows streams, not transports.

``streams`` (the catalogue) -> ``sink`` (every source's way in: ``validation``, grouped by
stream) -> ``buffer`` -> ``writer`` -> ``store`` (the batch statement) or ``booking``
(register readings) -> commit -> the submission's ``on_commit`` (acknowledge). ``batch``
holds what the writer commits at once and what the commit says. Nothing here imports a
source, the API or the tools.
"""
