"""The read model: how the analytics read energy from the rollups and the raw rows.

Derived from the stream catalogue, shared by the API's queries and the collector's alert
rules (which may not import the API): ``pieces`` reads a window as rollups for whole hours
and raw rows at its edges, ``fleet`` the whole fleet in one statement.
"""
