-- Streams: one row per stream, locked by writers to serialize appends per stream.
CREATE TABLE streams (
    stream_id TEXT PRIMARY KEY,
    version   BIGINT NOT NULL DEFAULT 0
);

-- Events: immutable. global_position is assigned under a transaction-scoped advisory
-- lock held until commit, so positions become visible in increasing order.
CREATE TABLE events (
    global_position BIGSERIAL PRIMARY KEY,
    event_id        UUID        NOT NULL,
    stream_id       TEXT        NOT NULL REFERENCES streams (stream_id),
    version         BIGINT      NOT NULL CHECK (version >= 1),
    event_type      TEXT        NOT NULL,
    data            JSONB       NOT NULL,
    metadata        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);
CREATE INDEX events_stream_recorded_at ON events (stream_id, recorded_at);

CREATE TABLE snapshots (
    stream_id TEXT        NOT NULL,
    version   BIGINT      NOT NULL,
    state     JSONB       NOT NULL,
    taken_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, version)
);

-- Transactional outbox: written in the same transaction as the events it announces.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    topic         TEXT        NOT NULL,
    msg_key       TEXT        NOT NULL,
    payload       BYTEA       NOT NULL,
    headers       JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by    TEXT,
    claimed_until TIMESTAMPTZ,
    published_at  TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Consumed messages whose effect is committed: the deduplication record.
CREATE TABLE processed_messages (
    consumer     TEXT        NOT NULL,
    message_id   TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- Durable wake-ups (saga step deadlines and retry backoffs).
CREATE TABLE timers (
    timer_key TEXT PRIMARY KEY,
    due_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX timers_due_at ON timers (due_at);
