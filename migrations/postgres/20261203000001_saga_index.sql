-- The saga index: one row per saga, kept by a projection of $all (see event-store/src/saga_index).
-- Times are microseconds since the epoch; `waiting_until_us` is the deadline or retry time the
-- saga waits for (it is not stuck before then). `stuck_reported_us` is the progress time at which the
-- saga was last reported stuck, so each stuck spell is logged once.
CREATE TABLE saga_index (
    saga_id uuid PRIMARY KEY,
    definition text NOT NULL,
    definition_version integer NOT NULL,
    status text NOT NULL,
    current_step text,
    started_us bigint NOT NULL,
    progress_us bigint NOT NULL,
    finished_us bigint,
    waiting_until_us bigint,
    stuck_after_ms bigint,
    stuck_reported_us bigint
);
-- Keyset pages by start time, alone or within a status, a definition, or both.
CREATE INDEX saga_index_started ON saga_index (started_us, saga_id);
CREATE INDEX saga_index_status_started ON saga_index (status, started_us, saga_id);
CREATE INDEX saga_index_definition_started ON saga_index (definition, started_us, saga_id);
CREATE INDEX saga_index_definition_status_started ON saga_index (definition, status, started_us, saga_id);
-- Stuck detection and the stuck filter look only at sagas still waiting for something, in page order.
CREATE INDEX saga_index_open_started ON saga_index (started_us, saga_id) WHERE status IN ('RUNNING', 'COMPENSATING', 'FAILED');

-- Where each projection of $all has got to; moved in the same transaction as its rows.
CREATE TABLE projection_checkpoints (
    name text PRIMARY KEY,
    transaction_id bigint NOT NULL,
    global_position bigint NOT NULL
);
INSERT INTO projection_checkpoints (name, transaction_id, global_position) VALUES ('saga_index', 0, 0);
