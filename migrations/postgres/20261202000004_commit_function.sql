-- One commit in one round trip: sagaflow_commit(commit) does every write of an event-store
-- commit (stream appends with their expected versions, outbox messages, timers and the
-- processed-message record) and returns where each append landed. Called outside an
-- explicit transaction it is its own transaction.
--
-- commit = {"appends":   [{"i": <request index>, "stream": text, "expected": "any" | "no_stream" | <version>,
--                          "events": [{"id": uuid, "type": text, "data": jsonb, "metadata": jsonb}]}],
--           "processed": {"consumer": text, "message_id": text} | null,
--           "outbox":    [{"topic": text, "key": text, "payload": base64, "headers": {text: text}}],
--           "timers":    [{"key": text, "due_at": timestamptz | null (cancel)}]   (one entry per key)}
-- returns [{"i", "version", "positions": [bigint], "already_stored": bool}]
--
-- Each stream's writers are serialized by a transaction-scoped advisory lock on the hash of
-- its id, taken in hash order so that multi-stream commits cannot deadlock (two streams
-- with one hash share a lock: slower, still correct). Its version is its highest event's.
--
-- Refusals are raised with SQLSTATEs of class SF, mapped to typed errors by the store:
--   SF001 wrong expected version (MESSAGE: stream, DETAIL: actual version)
--   SF002 message already processed
--   SF004 an append mixes stored and new event ids (MESSAGE: stream)
-- An event id stored in another stream is the unique violation of events_event_id_key.
CREATE FUNCTION sagaflow_commit(c jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    a          jsonb;
    stream     text;
    at_version bigint;
    expected   jsonb;
    n_events   int;
    stored     bigint[];
    positions  bigint[];
    results    jsonb := '[]'::jsonb;
BEGIN
    FOR a IN SELECT value FROM jsonb_array_elements(c->'appends') ORDER BY hashtextextended(value->>'stream', 0) LOOP
        stream := a->>'stream';
        PERFORM pg_advisory_xact_lock(hashtextextended(stream, 0));
        SELECT coalesce(max(version), 0) INTO at_version FROM events WHERE stream_id = stream;
        n_events := jsonb_array_length(a->'events');
        IF n_events > 0 THEN
            -- Idempotent retry: every event id already stored in this stream writes nothing.
            SELECT array_agg(ev.global_position ORDER BY x.ord) INTO stored
              FROM jsonb_array_elements(a->'events') WITH ORDINALITY AS x(e, ord)
              JOIN events ev ON ev.event_id = (x.e->>'id')::uuid AND ev.stream_id = stream;
            IF coalesce(array_length(stored, 1), 0) = n_events THEN
                results := results || jsonb_build_array(jsonb_build_object(
                    'i', a->'i', 'version', at_version, 'positions', to_jsonb(stored), 'already_stored', true));
                CONTINUE;
            ELSIF stored IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'SF004', MESSAGE = stream;
            END IF;
        END IF;
        expected := a->'expected';
        IF NOT (expected = '"any"'::jsonb
                OR (expected = '"no_stream"'::jsonb AND at_version = 0)
                OR (jsonb_typeof(expected) = 'number' AND expected::text::bigint = at_version)) THEN
            RAISE EXCEPTION USING ERRCODE = 'SF001', MESSAGE = stream, DETAIL = at_version::text;
        END IF;
        IF n_events > 0 THEN
            IF at_version = 0 THEN
                INSERT INTO streams (stream_id) VALUES (stream) ON CONFLICT (stream_id) DO NOTHING;
            END IF;
            WITH inserted AS (
                INSERT INTO events (event_id, stream_id, version, event_type, data, metadata)
                SELECT (x.e->>'id')::uuid, stream, at_version + x.ord, x.e->>'type', x.e->'data', x.e->'metadata'
                  FROM jsonb_array_elements(a->'events') WITH ORDINALITY AS x(e, ord)
                 ORDER BY x.ord
                RETURNING global_position, version)
            SELECT array_agg(global_position ORDER BY version) INTO positions FROM inserted;
        ELSE
            positions := '{}';
        END IF;
        results := results || jsonb_build_array(jsonb_build_object(
            'i', a->'i', 'version', at_version + n_events, 'positions', to_jsonb(positions), 'already_stored', false));
    END LOOP;

    IF jsonb_typeof(c->'processed') = 'object' THEN
        INSERT INTO processed_messages (consumer, message_id)
        VALUES (c->'processed'->>'consumer', c->'processed'->>'message_id') ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SF002', MESSAGE = 'already processed';
        END IF;
    END IF;

    IF jsonb_array_length(c->'outbox') > 0 THEN
        -- Outbox ids follow the commit's message order: the relay publishes in id order.
        INSERT INTO outbox (topic, msg_key, payload, headers)
        SELECT x.m->>'topic', x.m->>'key', decode(x.m->>'payload', 'base64'), x.m->'headers'
          FROM jsonb_array_elements(c->'outbox') WITH ORDINALITY AS x(m, ord)
         ORDER BY x.ord;
    END IF;

    IF jsonb_array_length(c->'timers') > 0 THEN
        INSERT INTO timers (timer_key, due_at)
        SELECT t->>'key', (t->>'due_at')::timestamptz FROM jsonb_array_elements(c->'timers') AS t
         WHERE jsonb_typeof(t->'due_at') = 'string'
        ON CONFLICT (timer_key) DO UPDATE SET due_at = EXCLUDED.due_at;
        DELETE FROM timers
         WHERE timer_key = ANY(ARRAY(SELECT t->>'key' FROM jsonb_array_elements(c->'timers') AS t
                                      WHERE jsonb_typeof(t->'due_at') IS DISTINCT FROM 'string'));
    END IF;
    RETURN results;
END;
$$;
