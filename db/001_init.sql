-- onaccess verdict DB, schema version 1.
-- Paths are stored as BLOB: Linux file names are bytes, not text.

CREATE TABLE verdicts (
    dev        INTEGER NOT NULL,
    ino        INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    ctime_ns   INTEGER NOT NULL,
    verdict    TEXT    NOT NULL CHECK (verdict IN ('safe', 'dangerous')),
    generation INTEGER NOT NULL,
    rules      TEXT    NOT NULL DEFAULT '[]',   -- JSON list of matched rule names
    path       BLOB,                            -- last path seen for this inode
    sha256     TEXT,
    scanned_at REAL    NOT NULL,
    PRIMARY KEY (dev, ino)
);
CREATE INDEX verdicts_dangerous ON verdicts (verdict) WHERE verdict = 'dangerous';

CREATE TABLE allowlist (
    sha256   TEXT PRIMARY KEY,
    reason   TEXT,
    path     BLOB,
    added_at REAL NOT NULL
);

-- One row per quarantined file; `state` is the crash-safe journal of the move.
CREATE TABLE quarantine (
    id             TEXT PRIMARY KEY,
    state          TEXT NOT NULL,
    original_path  BLOB NOT NULL,
    sha256         TEXT,
    size           INTEGER,
    uid            INTEGER,
    gid            INTEGER,
    mode           INTEGER,
    atime_ns       INTEGER,
    mtime_ns       INTEGER,
    xattrs         TEXT,           -- JSON {name: base64 value}
    rules          TEXT NOT NULL DEFAULT '[]',
    event          TEXT,           -- exec | open | write | on-demand
    detected_at    REAL,
    quarantined_at REAL,
    detail         TEXT
);

-- Detection and block history (`onaccess events`), newest last.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL    NOT NULL,
    kind    TEXT    NOT NULL,      -- exec | open | write | on-demand | kernel-exec | kernel-open | kernel-mmap
    verdict TEXT    NOT NULL,
    action  TEXT    NOT NULL,      -- denied | allowed | quarantined | ...
    path    BLOB,
    pid     INTEGER,
    uid     INTEGER,
    exe     TEXT,
    rules   TEXT    NOT NULL DEFAULT '[]',
    detail  TEXT
);
CREATE INDEX events_at ON events (at);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
