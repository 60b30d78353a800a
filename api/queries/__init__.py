"""The API's SQL, by subject: ``status``, ``links``, ``analytics`` (with ``pieces``, the
"rollups for the whole hours, raw rows at the edges" template). Each function takes a
connection and returns records; only ``api.reports`` calls them."""
