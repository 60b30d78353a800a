"""HTTP ingest: bodies decoded into items, submitted and answered after the commit."""
