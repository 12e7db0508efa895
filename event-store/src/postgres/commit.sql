-- One event-store commit as one statement (one round trip; outside a transaction block it
-- is its own transaction). Every write is guarded by `ok`: when an expectation fails
-- nothing is written and the failure is reported. Concurrent writers are caught by unique
-- keys: a second writer of a stream's next version waits for the first and then fails on
-- events_stream_version_key; a second record of one processed message fails on
-- processed_messages_pkey.
--  $1 text[]  stream of each append        $2 int8[] its expectation: -1 any, 0 no stream, n version n
--  $3 int4[]  append (1-based) of each event, $4 uuid[] its id, $5 text[] type, $6 jsonb[] data, $7 jsonb[] metadata
--  $8 text    processed consumer (NULL: none), $9 text processed message id
--  $10 text[] outbox topics, $11 text[] keys, $12 bytea[] payloads, $13 jsonb[] headers
--  $14 text[] timers to set, $15 timestamptz[] their times, $16 text[] timers to cancel
--  $17 text   the notice to other processes (NULL: none), sent when the transaction commits
-- The statement is put together per commit (commit.rs): the parts a commit has nothing for
-- are left out, as their setup costs more than the rest when they write nothing.
-- part: head
WITH params AS (
    -- Never read: names every parameter's type whichever parts are left out.
    SELECT $8::text, $9::text, $10::text[], $11::text[], $12::bytea[], $13::jsonb[], $14::text[],
           $15::timestamptz[], $16::text[], $17::text
), appends AS MATERIALIZED (
    SELECT a.i, a.stream, a.expected,
           (SELECT coalesce(max(e.version), 0) FROM events e WHERE e.stream_id = a.stream) AS at_version
      FROM unnest($1::text[], $2::int8[]) WITH ORDINALITY AS a(stream, expected, i)
), -- include: append_checks
), ok AS (
    SELECT NOT EXISTS (SELECT 1 FROM verdicts WHERE failure IS NOT NULL) AS ok
-- part: events
), inserted AS (
    INSERT INTO events (event_id, stream_id, version, event_type, data, metadata)
    SELECT ne.id, v.stream, v.at_version + ne.k, ne.type, ne.data, ne.metadata
      FROM new_events ne JOIN verdicts v ON v.i = ne.ai
     WHERE (SELECT ok FROM ok) AND NOT v.already_stored
     ORDER BY ne.n
    RETURNING stream_id, global_position, version
), listed AS (
    INSERT INTO streams (stream_id)
    SELECT v.stream FROM verdicts v
     WHERE (SELECT ok FROM ok) AND v.at_version = 0 AND v.n_new > 0 AND NOT v.already_stored
    ON CONFLICT (stream_id) DO NOTHING
-- part: processed
), processed AS (
    INSERT INTO processed_messages (consumer, message_id)
    SELECT $8, $9 WHERE $8::text IS NOT NULL AND (SELECT ok FROM ok)
-- part: outbox
), sent AS (
    INSERT INTO outbox (topic, msg_key, payload, headers)
    SELECT m.topic, m.key, m.payload, m.headers
      FROM unnest($10::text[], $11::text[], $12::bytea[], $13::jsonb[]) WITH ORDINALITY AS m(topic, key, payload, headers, n)
     WHERE (SELECT ok FROM ok)
     ORDER BY m.n
-- part: timers_set
), timers_set AS (
    INSERT INTO timers (timer_key, due_at)
    SELECT t.key, t.due_at FROM unnest($14::text[], $15::timestamptz[]) AS t(key, due_at)
     WHERE (SELECT ok FROM ok)
    ON CONFLICT (timer_key) DO UPDATE SET due_at = EXCLUDED.due_at
-- part: timers_cancelled
), timers_cancelled AS (
    DELETE FROM timers WHERE timer_key = ANY($16::text[]) AND (SELECT ok FROM ok)
-- part: tail
)
SELECT v.i, v.at_version, v.n_new, v.already_stored, v.failure, v.stored_elsewhere,
       CASE WHEN v.already_stored
            THEN ARRAY(SELECT s.global_position FROM stored s WHERE s.ai = v.i ORDER BY s.n)
            ELSE {inserted_positions}
       END AS positions,
       -- NOTIFY_CHANNEL (notices.rs); evaluated once, and only when the commit is written.
       (SELECT count(*) FROM (SELECT pg_notify('sagaflow_commits', $17::text)) AS n
         WHERE $17::text IS NOT NULL AND (SELECT ok FROM ok)) AS notified
  FROM verdicts v ORDER BY v.i
