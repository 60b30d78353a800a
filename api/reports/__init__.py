"""The API's answers, built from the queries: one place that turns rows into models.

The layers go one way: routes and dashboard pages -> reports -> queries. The JSON handlers
reply with these models and the dashboard renders the same ones, so a figure on a page is
always the figure the API gives for the same window. Reports raise ``ProblemError`` for an
unknown device or a conflict, and ``api.policy.PolicyError`` for a refused window. One
module per subject, as ``queries/`` and ``routes/``: ``status``, ``links``, ``registers``,
``analytics``, ``alerts``.
"""
