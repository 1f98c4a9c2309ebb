-- The embedded store of `voting up`: the same tables as PostgreSQL's, kept by row triggers
-- (SQLite has no statement-level triggers).
CREATE TABLE IF NOT EXISTS votes (
    id             TEXT    NOT NULL PRIMARY KEY,
    vote           TEXT    NOT NULL,
    cast_at_ms     INTEGER NOT NULL,
    position_major INTEGER NOT NULL,
    position_minor INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS tallies (
    vote  TEXT    NOT NULL PRIMARY KEY,
    votes INTEGER NOT NULL CHECK (votes >= 0)
);

CREATE TRIGGER IF NOT EXISTS votes_tally_insert AFTER INSERT ON votes
BEGIN
    INSERT INTO tallies (vote, votes) VALUES (NEW.vote, 1)
    ON CONFLICT (vote) DO UPDATE SET votes = votes + 1;
END;

CREATE TRIGGER IF NOT EXISTS votes_tally_update AFTER UPDATE OF vote ON votes
WHEN OLD.vote <> NEW.vote
BEGIN
    UPDATE tallies SET votes = votes - 1 WHERE vote = OLD.vote;
    INSERT INTO tallies (vote, votes) VALUES (NEW.vote, 1)
    ON CONFLICT (vote) DO UPDATE SET votes = votes + 1;
END;

CREATE TRIGGER IF NOT EXISTS votes_tally_delete AFTER DELETE ON votes
BEGIN
    UPDATE tallies SET votes = votes - 1 WHERE vote = OLD.vote;
END;
