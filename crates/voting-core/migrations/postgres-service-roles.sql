-- What each service's own role may do, given by `voting migrate` after the migrations, every
-- time: a role made after the tables (a cluster upgraded to per-service roles) gets its
-- privileges at the next deploy. The roles are the deployment's to make, with their passwords
-- (deploy/docker/postgres/pgnode.py makes them with the cluster); where they do not exist (one
-- process, a developer's database) the schema's owner is the only role, and this does nothing.
--
-- Nobody but the owner (the migrate job's role) may change the schema, delete or truncate.
DO $$
BEGIN
    -- The worker applies batches: INSERT ... ON CONFLICT DO UPDATE reads and writes votes, the
    -- tally triggers (run as the worker) write tallies, and LOCK TABLE tallies IN SHARE ROW
    -- EXCLUSIVE MODE takes UPDATE on it.
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'voting_worker') THEN
        GRANT SELECT, INSERT, UPDATE ON votes, tallies TO voting_worker;
    END IF;
    -- The result service reads the tallies and LISTENs (which needs no privilege); who voted
    -- what is not its to read.
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'voting_result') THEN
        GRANT SELECT ON tallies TO voting_result;
    END IF;
    -- The certificate manager keeps its account, certificates, orders and challenges, and
    -- nothing of the votes.
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'voting_certs') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE
            ON acme_accounts, acme_certificates, acme_orders, acme_challenges TO voting_certs;
    END IF;
END
$$;
