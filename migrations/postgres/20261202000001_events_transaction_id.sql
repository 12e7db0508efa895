-- $all order without a global lock. Each event records the transaction that wrote it; readers
-- see only events of transactions older than every one still running and order them by
-- (transaction, position), so writers commit in parallel and no reader skips an event that
-- commits later at a lower position. Events written before this migration were written under
-- the old global lock, in position order: they get transaction 0 and precede everything new.
-- Adding a column with a constant default rewrites nothing; the volatile default applies to
-- new rows only.
ALTER TABLE events ADD COLUMN transaction_id xid8 NOT NULL DEFAULT '0';
ALTER TABLE events ALTER COLUMN transaction_id SET DEFAULT pg_current_xact_id();
