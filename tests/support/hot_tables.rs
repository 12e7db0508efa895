//! The tables every saga writes, grown in bulk: for the test and the bench that check hot
//! statements keep their cost as the tables grow under plans cached while they were small.

use sqlx::PgPool;

/// The tables the hot statements read and write.
pub const HOT_TABLES: [&str; 5] = ["events", "outbox", "timers", "processed_messages", "saga_index"];

/// Keeps autovacuum off the hot tables, as on a new deployment before autovacuum gets to them:
/// it would re-plan every connection once it analyzed a grown table.
pub async fn keep_autovacuum_off(pool: &PgPool) {
    for table in HOT_TABLES {
        sqlx::query(&format!("ALTER TABLE {table} SET (autovacuum_enabled = off)"))
            .execute(pool)
            .await
            .expect("autovacuum off");
    }
}

/// Adds rows `from..to` to every hot table (events in streams of 10), with no ANALYZE.
pub async fn grow(pool: &PgPool, from: i64, to: i64) {
    for sql in [
        "INSERT INTO events (event_id, stream_id, version, event_type, data)
           SELECT gen_random_uuid(), 'bulk-' || (g / 10), g % 10 + 1, 'Bulk', '{\"pad\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}'
             FROM generate_series($1 + 1000000000, $2 + 1000000000 - 1) g",
        "INSERT INTO streams (stream_id) SELECT DISTINCT 'bulk-' || (g / 10)
             FROM generate_series($1 + 1000000000, $2 + 1000000000 - 1) g ON CONFLICT DO NOTHING",
        "INSERT INTO outbox (topic, msg_key, payload) SELECT 't', 'k' || g, '\\x7b7d' FROM generate_series($1, $2 - 1) g",
        "INSERT INTO timers (timer_key, due_at) SELECT 'bulk-' || g, now() + interval '1 day' FROM generate_series($1, $2 - 1) g",
        "INSERT INTO processed_messages (consumer, message_id) SELECT 'bulk', 'm' || g FROM generate_series($1, $2 - 1) g",
        "INSERT INTO saga_index (saga_id, definition, definition_version, status, started_us, progress_us)
           SELECT gen_random_uuid(), 'bulk', 1, CASE WHEN g % 100 = 0 THEN 'RUNNING' ELSE 'COMPLETED' END, g, g
             FROM generate_series($1, $2 - 1) g",
    ] {
        sqlx::query(sql).bind(from).bind(to).execute(pool).await.expect("bulk rows");
    }
    sqlx::query(PUBLISH_ALL).execute(pool).await.expect("bulk rows published");
}

/// Records every outbox row as published (the relay's checkpoint moved to the last one).
pub const PUBLISH_ALL: &str = "UPDATE outbox_relay SET transaction_id = last.transaction_id::text::int8, id = last.id
    FROM (SELECT transaction_id, id FROM outbox ORDER BY transaction_id DESC, id DESC LIMIT 1) last
   WHERE name = 'outbox'";
