-- Several commits as one statement: one round trip, one transaction, one WAL flush for the
-- whole group, and a verdict per commit. A commit whose expectation fails (a stream's version,
-- an event id stored elsewhere, a message already processed) writes nothing, and the others
-- are written. The group never holds two commits touching one stream, processed message or
-- timer (group_commit.rs sees to it), so a commit's checks are not affected by the others'
-- writes. A concurrent writer in another transaction is caught by the unique keys, which fail
-- the whole statement; group_commit.rs then writes each commit alone.
--  $1 text[]  stream of each append        $2 int8[] its expectation: -1 any, 0 no stream, n version n
--  $3 int4[]  append (1-based) of each event, $4 uuid[] its id, $5 text[] type, $6 jsonb[] data, $7 jsonb[] metadata
--  $8 int4[]  commit (1-based) of each append
--  $9 int4[]  commit of each processed record, $10 text[] its consumer, $11 text[] its message id
--  $12 int4[] commit of each outbox message, $13 text[] topics, $14 text[] keys, $15 bytea[] payloads, $16 jsonb[] headers
--  $17 int4[] commit of each timer to set, $18 text[] its key, $19 timestamptz[] its time
--  $20 int4[] commit of each timer to cancel, $21 text[] its key
--  $22 int4   how many commits
--  $23 text   the notice to other processes (NULL: none), sent when the transaction commits
WITH appends AS MATERIALIZED (
    SELECT a.i, a.c, a.stream, a.expected,
           (SELECT coalesce(max(e.version), 0) FROM events e WHERE e.stream_id = a.stream) AS at_version
      FROM unnest($1::text[], $2::int8[], $8::int4[]) WITH ORDINALITY AS a(stream, expected, c, i)
), -- include: append_checks
), processed_in AS MATERIALIZED (
    SELECT p.c, p.consumer, p.message_id,
           EXISTS (SELECT 1 FROM processed_messages pm
                    WHERE pm.consumer = p.consumer AND pm.message_id = p.message_id) AS seen
      FROM unnest($9::int4[], $10::text[], $11::text[]) AS p(c, consumer, message_id)
), commits AS MATERIALIZED (
    SELECT g.c,
           NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.c = g.c AND v.failure IS NOT NULL)
           AND NOT EXISTS (SELECT 1 FROM processed_in p WHERE p.c = g.c AND p.seen) AS ok
      FROM generate_series(1, $22::int4) AS g(c)
), inserted AS (
    INSERT INTO events (event_id, stream_id, version, event_type, data, metadata)
    SELECT ne.id, v.stream, v.at_version + ne.k, ne.type, ne.data, ne.metadata
      FROM new_events ne JOIN verdicts v ON v.i = ne.ai JOIN commits k ON k.c = v.c
     WHERE k.ok AND NOT v.already_stored
     ORDER BY ne.n
    RETURNING stream_id, global_position, version
), listed AS (
    INSERT INTO streams (stream_id)
    SELECT v.stream FROM verdicts v JOIN commits k ON k.c = v.c
     WHERE k.ok AND v.at_version = 0 AND v.n_new > 0 AND NOT v.already_stored
    ON CONFLICT (stream_id) DO NOTHING
), processed AS (
    INSERT INTO processed_messages (consumer, message_id)
    SELECT p.consumer, p.message_id FROM processed_in p JOIN commits k ON k.c = p.c WHERE k.ok
), sent AS (
    INSERT INTO outbox (topic, msg_key, payload, headers)
    SELECT m.topic, m.key, m.payload, m.headers
      FROM unnest($12::int4[], $13::text[], $14::text[], $15::bytea[], $16::jsonb[])
           WITH ORDINALITY AS m(c, topic, key, payload, headers, n)
      JOIN commits k ON k.c = m.c
     WHERE k.ok
     ORDER BY m.n
), timers_set AS (
    INSERT INTO timers (timer_key, due_at)
    SELECT t.key, t.due_at FROM unnest($17::int4[], $18::text[], $19::timestamptz[]) AS t(c, key, due_at)
      JOIN commits k ON k.c = t.c
     WHERE k.ok
    ON CONFLICT (timer_key) DO UPDATE SET due_at = EXCLUDED.due_at
), timers_cancelled AS (
    DELETE FROM timers WHERE timer_key = ANY(ARRAY(
        SELECT t.key FROM unnest($20::int4[], $21::text[]) AS t(c, key) JOIN commits k ON k.c = t.c WHERE k.ok))
)
SELECT v.c, v.i, v.at_version, v.n_new, v.already_stored, v.failure, v.stored_elsewhere,
       CASE WHEN v.already_stored
            THEN ARRAY(SELECT s.global_position FROM stored s WHERE s.ai = v.i ORDER BY s.n)
            ELSE ARRAY(SELECT r.global_position FROM inserted r WHERE r.stream_id = v.stream ORDER BY r.version)
       END AS positions,
       -- NOTIFY_CHANNEL (notices.rs); evaluated once.
       (SELECT count(*) FROM (SELECT pg_notify('sagaflow_commits', $23::text)) AS n
         WHERE $23::text IS NOT NULL) AS notified
  FROM verdicts v
UNION ALL
SELECT p.c, NULL, NULL, NULL, NULL, 'processed', NULL, NULL, NULL FROM processed_in p WHERE p.seen
ORDER BY 1, 2 NULLS LAST
