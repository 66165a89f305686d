//! The SQLite sink: one connection, used from a blocking thread. The file is in write-ahead
//! log mode, so queries from other connections go on while a batch commits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, ErrorCode};

use super::{BoxFuture, Conn, SinkError};
use crate::projection::model::Value;

const SINK: &str = "SQLite";

/// How long a write waits for another connection's transaction before it fails.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Sqlite {
    pub(crate) path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl Sqlite {
    pub(crate) fn open(path: &Path) -> Result<Sqlite, SinkError> {
        let conn = Connection::open(path).map_err(|e| SinkError::Unavailable {
            sink: SINK,
            message: format!("cannot open {}: {e}", path.display()),
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(error)?;
        // WAL: readers do not block the writer. NORMAL: a commit is durable against a crash
        // of the process at once, and against a power loss from the next checkpoint of the
        // WAL; either way the read model and its checkpoint stay together.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(error)?;
        conn.set_prepared_statement_cache_capacity(256);
        Ok(Sqlite {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(crate) async fn exec<T: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(Conn<'c>) -> BoxFuture<'c, Result<T, SinkError>> + Send + 'static,
    ) -> Result<T, SinkError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            // A transaction left open by a call that panicked halfway is rolled back first.
            if !guard.is_autocommit() {
                let _ = guard.execute_batch("ROLLBACK");
            }
            finish_now(f(Conn::Sqlite(&mut guard)))
        })
        .await
        .map_err(|e| SinkError::Unavailable {
            sink: SINK,
            message: format!("the call did not finish: {e}"),
        })?
    }
}

/// Runs a future that never waits (every SQLite call in it is blocking) to its end.
fn finish_now<T>(mut f: BoxFuture<'_, Result<T, SinkError>>) -> Result<T, SinkError> {
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => unreachable!("a SQLite call never waits"),
    }
}

fn error(e: rusqlite::Error) -> SinkError {
    let transient = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull)
    );
    if transient {
        SinkError::Unavailable {
            sink: SINK,
            message: e.to_string(),
        }
    } else {
        SinkError::Statement {
            sink: SINK,
            message: e.to_string(),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

pub(crate) fn batch(c: &mut Connection, sql: &str) -> Result<(), SinkError> {
    c.execute_batch(sql).map_err(error)
}

/// `sql` with `?n` placeholders.
pub(crate) fn execute(c: &mut Connection, sql: &str, params: &[Value]) -> Result<u64, SinkError> {
    let mut stmt = c.prepare_cached(sql).map_err(error)?;
    let n = stmt.execute(params_from_iter(params)).map_err(error)?;
    Ok(n as u64)
}

pub(crate) fn query(
    c: &mut Connection,
    sql: &str,
    params: &[Value],
) -> Result<Vec<Vec<Value>>, SinkError> {
    let mut stmt = c.prepare_cached(sql).map_err(error)?;
    let width = stmt.column_count();
    let mut rows = stmt.query(params_from_iter(params)).map_err(error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(error)? {
        let mut r = Vec::with_capacity(width);
        for i in 0..width {
            r.push(value(row.get_ref(i).map_err(error)?));
        }
        out.push(r);
    }
    Ok(out)
}
