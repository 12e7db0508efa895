-- no-transaction
-- Retention deletes published outbox rows by age in batches: this index finds each batch without a
-- scan. Built CONCURRENTLY, so a large existing outbox keeps taking writes while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_published_at ON outbox (published_at)
    WHERE published_at IS NOT NULL AND dead_letter_reason IS NULL;
