-- no-transaction
-- No query reads events by (stream, time): point-in-time replays read the stream in version
-- order. One index fewer to maintain on every append.
DROP INDEX CONCURRENTLY IF EXISTS events_stream_recorded_at;
