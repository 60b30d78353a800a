"""The API's endpoints by subject, each module an ``ENDPOINTS`` list (``api.endpoints``):
``status``, ``links``, ``analytics``, ``ingest``, ``system``; ``common`` holds the parameter
and reply descriptions they share."""
