-- One row per voter: `id` is the voter and `vote` their latest choice, the same two columns
-- as the original app's table, so its query
--   SELECT vote, COUNT(id) AS count FROM votes GROUP BY vote
-- keeps working. A database of the original app is adopted as it is: its rows are kept.
CREATE TABLE IF NOT EXISTS votes (
    id   varchar(255) NOT NULL UNIQUE,
    vote varchar(255) NOT NULL
);

-- When the vote was cast, and the queue position that orders a voter's votes: of two
-- deliveries for one voter the greater position wins, so redelivered or reordered batches
-- never bring back an older choice.
ALTER TABLE votes
    ADD COLUMN IF NOT EXISTS cast_at        timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS position_major bigint      NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS position_minor bigint      NOT NULL DEFAULT 0;

-- Counts per option, kept by the triggers below in the same transaction as the votes, so
-- reading results costs one row per option however many votes there are.
CREATE TABLE IF NOT EXISTS tallies (
    vote  varchar(255) PRIMARY KEY,
    votes bigint       NOT NULL CHECK (votes >= 0)
);

INSERT INTO tallies (vote, votes)
SELECT vote, count(*) FROM votes GROUP BY vote
ON CONFLICT (vote) DO NOTHING;

-- Statement-level triggers see a whole batch at once through transition tables, so a batch
-- of thousands of votes touches each tally row once rather than once per vote. Each also
-- notifies listeners; the notification is delivered at commit, and never for a rollback.
CREATE OR REPLACE FUNCTION tally_inserted_votes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tallies (vote, votes)
    SELECT vote, count(*) FROM new_votes GROUP BY vote ORDER BY vote
    ON CONFLICT (vote) DO UPDATE SET votes = tallies.votes + excluded.votes;
    PERFORM pg_notify('votes_changed', '');
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tally_updated_votes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Rows first, then deltas: an INSERT ... ON CONFLICT of a negative delta would fail the
    -- CHECK on the row it proposes before it ever got to the conflict.
    INSERT INTO tallies (vote, votes)
    SELECT DISTINCT vote, 0 FROM new_votes ORDER BY vote
    ON CONFLICT (vote) DO NOTHING;
    UPDATE tallies SET votes = tallies.votes + changes.delta
    FROM (
        SELECT vote, sum(delta) AS delta FROM (
            SELECT vote, -1 AS delta FROM old_votes
            UNION ALL
            SELECT vote, 1 AS delta FROM new_votes
        ) AS moves
        GROUP BY vote HAVING sum(delta) <> 0
    ) AS changes
    WHERE tallies.vote = changes.vote;
    PERFORM pg_notify('votes_changed', '');
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tally_deleted_votes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tallies SET votes = tallies.votes - gone.votes
    FROM (SELECT vote, count(*) AS votes FROM old_votes GROUP BY vote) AS gone
    WHERE tallies.vote = gone.vote;
    PERFORM pg_notify('votes_changed', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS votes_tally_insert ON votes;
CREATE TRIGGER votes_tally_insert AFTER INSERT ON votes
    REFERENCING NEW TABLE AS new_votes
    FOR EACH STATEMENT EXECUTE FUNCTION tally_inserted_votes();

DROP TRIGGER IF EXISTS votes_tally_update ON votes;
CREATE TRIGGER votes_tally_update AFTER UPDATE ON votes
    REFERENCING OLD TABLE AS old_votes NEW TABLE AS new_votes
    FOR EACH STATEMENT EXECUTE FUNCTION tally_updated_votes();

DROP TRIGGER IF EXISTS votes_tally_delete ON votes;
CREATE TRIGGER votes_tally_delete AFTER DELETE ON votes
    REFERENCING OLD TABLE AS old_votes
    FOR EACH STATEMENT EXECUTE FUNCTION tally_deleted_votes();
