-- The certificate manager's state (`voting certs`): one ACME account per directory, the
-- certificates every edge proxy serves, the orders in progress, and the HTTP-01 challenge
-- answers any manager replica gives. Private keys are sealed (AES-256-GCM) with a key only the
-- managers hold (the `certs_secret` Swarm secret): a database dump does not reveal them.
--
-- Every table is named `acme_*`: Pgpool-II sends every query naming one to the primary
-- (`primary_routing_query_pattern_list`), so a new leader never resumes from a standby that has
-- not yet received its predecessor's last write, and a challenge published a moment ago is
-- found.

CREATE TABLE acme_accounts (
    directory_url text PRIMARY KEY,
    -- instant-acme's AccountCredentials (JSON, holding the account key), sealed.
    credentials bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE acme_certificates (
    name text PRIMARY KEY,
    domains text[] NOT NULL,
    certificate_pem text NOT NULL,
    private_key bytea NOT NULL,
    not_after timestamptz NOT NULL,
    -- The order that issued it: one order per issuance, never two.
    order_url text NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now(),
    -- Set by `voting certs renew`: the leader renews at its next check, whatever the expiry.
    renewal_requested_at timestamptz
);

-- An order is recorded before any of its challenges is answered, and its certificate key
-- before it is finalized: a leader that dies at any step leaves what the next one needs to
-- finish the same order instead of placing another.
CREATE TABLE acme_orders (
    name text PRIMARY KEY,
    domains text[] NOT NULL,
    order_url text NOT NULL UNIQUE,
    private_key bytea,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE acme_challenges (
    token text PRIMARY KEY,
    key_authorization text NOT NULL,
    order_url text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
