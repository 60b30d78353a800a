-- Dashboard sign-ins. The browser's cookie holds a random session id, never the read
-- token; the server keeps only digests: of the id (so a copy of this table opens nothing)
-- and of the token that signed in (so removing the token from READ_TOKENS ends its
-- sessions). Signing out deletes the row: a copied cookie stops working at once.
CREATE TABLE dashboard_sessions (
    id_sha256    bytea       PRIMARY KEY,
    token_sha256 bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expires_at_idx ON dashboard_sessions (expires_at);
