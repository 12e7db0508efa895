-- The checks every append gets, shared by commit.sql and group_commit.sql (both bind the
-- events as $3 append of each event, $4 id, $5 type, $6 data, $7 metadata, and name their
-- appends `appends`): which events are stored already, and each append's failure, if any.
new_events AS (
    SELECT x.ai, x.id, x.type, x.data, x.metadata, x.n,
           row_number() OVER (PARTITION BY x.ai ORDER BY x.n) AS k
      FROM unnest($3::int4[], $4::uuid[], $5::text[], $6::jsonb[], $7::jsonb[]) WITH ORDINALITY AS x(ai, id, type, data, metadata, n)
), stored AS (
    -- Looked up by id through the unique index (= ANY), whatever the plan thinks of new_events.
    SELECT ne.ai, ne.n, ev.stream_id, ev.global_position
      FROM (SELECT event_id, stream_id, global_position FROM events WHERE event_id = ANY($4::uuid[])) ev
      JOIN new_events ne ON ne.id = ev.event_id
), checked AS MATERIALIZED (
    SELECT a.*,
           (SELECT count(*) FROM new_events ne WHERE ne.ai = a.i) AS n_new,
           (SELECT count(*) FROM stored s WHERE s.ai = a.i AND s.stream_id = a.stream) AS n_stored,
           (SELECT min(ne.id::text) FROM stored s JOIN new_events ne ON ne.n = s.n
             WHERE s.ai = a.i AND s.stream_id <> a.stream) AS stored_elsewhere
      FROM appends a
), verdicts AS (
    SELECT c.*,
           c.n_new > 0 AND c.n_stored = c.n_new AS already_stored,
           CASE
             WHEN c.stored_elsewhere IS NOT NULL THEN 'duplicate'
             WHEN c.n_new > 0 AND c.n_stored = c.n_new THEN NULL
             WHEN c.n_stored > 0 THEN 'partial'
             WHEN c.expected = -1 OR c.expected = c.at_version THEN NULL
             ELSE 'version'
           END AS failure
      FROM checked c
