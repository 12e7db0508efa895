-- The saga index: one row per saga, kept by a projection of $all (see event-store/src/saga_index).
-- Times are microseconds since the epoch; `waiting_until_us` is the deadline or retry time the
-- saga waits for (it is not stuck before then). `stuck_reported_us` is the progress time at which the
-- saga was last reported stuck, so each stuck spell is logged once.
CREATE TABLE saga_index (
    saga_id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    definition_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    current_step TEXT,
    started_us INTEGER NOT NULL,
    progress_us INTEGER NOT NULL,
    finished_us INTEGER,
    waiting_until_us INTEGER,
    stuck_after_ms INTEGER,
    stuck_reported_us INTEGER
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
    name TEXT PRIMARY KEY,
    transaction_id INTEGER NOT NULL,
    global_position INTEGER NOT NULL
);
INSERT INTO projection_checkpoints (name, transaction_id, global_position) VALUES ('saga_index', 0, 0);
