//! Statements over many rows with every value bound, `… VALUES (?, ?), (?, ?) …`, so that a
//! group's rows take one statement per table and nothing is encoded as JSON for SQLite to parse
//! again. Each row count has its own statement, kept in the connection's statement cache.

use rusqlite::{Connection, Row, ToSql};

/// Rows per statement at most: a group with more takes one statement per chunk.
const CHUNK: usize = 32;

/// Where a statement's text takes its list of rows.
const ROWS: &str = "{rows}";

/// Runs `statement` once per chunk of `rows`, its [`ROWS`] replaced by one `(?, …)` per row
/// and each row's `values` bound in order; returns the statements run.
pub(super) fn execute<R, const C: usize>(
    connection: &Connection,
    statement: &str,
    rows: &[R],
    values: impl Fn(&R) -> [&dyn ToSql; C],
) -> rusqlite::Result<u64> {
    let mut statements = 0;
    for chunk in rows.chunks(CHUNK) {
        let mut prepared = connection.prepare_cached(&with_rows(statement, C, chunk.len()))?;
        bind(&mut prepared, chunk, &values)?;
        prepared.raw_execute()?;
        statements += 1;
    }
    Ok(statements)
}

/// Like [`execute`] for a query: collects what `read` makes of each row it returns.
pub(super) fn query<R, T, const C: usize>(
    connection: &Connection,
    statement: &str,
    rows: &[R],
    values: impl Fn(&R) -> [&dyn ToSql; C],
    mut read: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<(Vec<T>, u64)> {
    let (mut found, mut statements) = (Vec::new(), 0);
    for chunk in rows.chunks(CHUNK) {
        let mut prepared = connection.prepare_cached(&with_rows(statement, C, chunk.len()))?;
        bind(&mut prepared, chunk, &values)?;
        let mut returned = prepared.raw_query();
        while let Some(row) = returned.next()? {
            found.push(read(row)?);
        }
        statements += 1;
    }
    Ok((found, statements))
}

fn bind<R, const C: usize>(
    prepared: &mut rusqlite::Statement<'_>,
    chunk: &[R],
    values: &impl Fn(&R) -> [&dyn ToSql; C],
) -> rusqlite::Result<()> {
    let mut index = 1;
    for row in chunk {
        for value in values(row) {
            prepared.raw_bind_parameter(index, value)?;
            index += 1;
        }
    }
    Ok(())
}

/// `statement` with `rows` lists of `columns` placeholders in place of [`ROWS`].
pub(super) fn with_rows(statement: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    statement.replacen(ROWS, &vec![row; rows].join(", "), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_past_a_chunk_are_written_and_read_in_several_statements() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)").unwrap();
        let rows: Vec<(i64, String)> = (0..70).map(|k| (k, format!("v{k}"))).collect();

        let written = execute(&connection, "INSERT INTO t (k, v) VALUES {rows}", &rows, |(k, v)| [k, v]).unwrap();
        let keys: Vec<i64> = (0..70).step_by(3).collect();
        let (found, read) = query(
            &connection,
            "SELECT k, v FROM t WHERE k IN ({rows}) ORDER BY k",
            &keys,
            |k| [k],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
        )
        .unwrap();

        assert_eq!(written, 3, "70 rows are 32 + 32 + 6");
        assert_eq!(read, 1);
        assert_eq!(found, keys.iter().map(|k| (*k, format!("v{k}"))).collect::<Vec<_>>());
        let count: i64 = connection.query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap();
        assert_eq!(count, 70);
    }
}
