//! Where read models live: a SQLite file (the embedded default) or a PostgreSQL schema.
//!
//! Beside a projection's tables the sink keeps two of its own:
//! - `annal_projections`: per projection its version, the generation of its live tables, the
//!   checkpoint (`next_position`: every position below it is applied) and, during a rebuild,
//!   the shadow copy's version and checkpoint;
//! - `annal_projection_failures`: events a projection could not apply (position, error, and
//!   whether they were skipped or stopped the runner).
//!
//! Every batch is one transaction that first moves the checkpoint row from the position the
//! runner read to the new one (so that two runners of one projection can never both apply a
//! batch), then makes the batch's changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annal_core::Timestamp;

use super::model::{Table, Value};
use super::sql::{self, Dialect, Target};

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// Why a sink did not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// A statement failed; the transaction it was part of was rolled back.
    #[error("{sink}: {message}")]
    Statement { sink: &'static str, message: String },
    /// The sink cannot be reached (or was busy too long); worth trying again.
    #[error("{sink} is unavailable: {message}")]
    Unavailable { sink: &'static str, message: String },
    /// The request itself is wrong (a bad name, an unknown projection).
    #[error("{0}")]
    Invalid(String),
}

impl SinkError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Unavailable { .. })
    }
}

/// Where a projection stands, as the sink records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub projection: String,
    /// The projection version the live tables were built by.
    pub version: u32,
    /// How many times the live tables were swapped for a rebuilt copy.
    pub generation: u64,
    /// Every log position below this one is applied to the live tables.
    pub next_position: u64,
    /// A rebuild in progress: the version it builds and its own checkpoint.
    pub rebuild: Option<(u32, u64)>,
    pub updated_at: Timestamp,
}

impl Checkpoint {
    /// The last log position applied to the live tables, if any.
    pub fn position(&self) -> Option<u64> {
        self.next_position.checked_sub(1)
    }
}

/// An event a projection could not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub projection: String,
    pub position: u64,
    pub stream_id: String,
    pub revision: u64,
    pub event_type: String,
    pub error: String,
    pub attempts: u32,
    /// `skipped`, or `stopped` when the runner stopped on it.
    pub action: String,
    pub failed_at: Timestamp,
}

/// A statement ready for one sink, with its parameters.
pub(crate) type Stmt = (Arc<str>, Vec<Value>);

/// One transaction of a runner: changes for positions `from..to` of one copy.
#[derive(Debug)]
pub(crate) struct Batch {
    pub projection: String,
    pub target: Target,
    /// The live tables' generation, or the shadow copy's version: a batch commits only
    /// while it still holds.
    pub guard: u64,
    pub from: u64,
    pub to: u64,
    pub stmts: Vec<Stmt>,
    pub failures: Vec<Failure>,
}

/// A row of a read model that differs between the live tables and a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub table: String,
    pub key: Vec<Value>,
    pub kind: DifferenceKind,
    /// The live row, if there is one.
    pub live: Option<Vec<Value>>,
    /// The row a replay made, if there is one.
    pub replayed: Option<Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DifferenceKind {
    /// The replay has the row; the live table does not.
    Missing,
    /// The live table has a row the replay does not.
    Extra,
    /// Both have the row; these columns differ.
    Different(Vec<String>),
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A sink: a cheap handle, cloned freely.
#[derive(Clone)]
pub struct Sink {
    inner: Arc<Inner>,
    meta_ready: Arc<AtomicBool>,
}

enum Inner {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::Sqlite),
    #[cfg(feature = "postgres")]
    Postgres(Box<postgres::Postgres>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sink({})", self.describe())
    }
}

/// A connection of a sink, inside one call.
pub(crate) enum Conn<'c> {
    #[cfg(feature = "sqlite")]
    Sqlite(&'c mut rusqlite::Connection),
    #[cfg(feature = "postgres")]
    Postgres(&'c mut postgres::PgConn),
}

impl Sink {
    /// Read models in the SQLite file at `path`, created if missing (write-ahead log mode;
    /// a transaction is durable once SQLite has written it to its log).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(path: impl AsRef<std::path::Path>) -> Result<Sink, SinkError> {
        Ok(Sink::from(Inner::Sqlite(sqlite::Sqlite::open(
            path.as_ref(),
        )?)))
    }

    /// Read models in `schema` (created if missing) of the PostgreSQL database at `url`
    /// (`host=... user=... dbname=...` or `postgres://...`).
    #[cfg(feature = "postgres")]
    pub async fn postgres(url: &str, schema: &str) -> Result<Sink, SinkError> {
        if let Some(p) = super::model::identifier_problem(schema) {
            return Err(SinkError::Invalid(format!("schema name '{schema}': {p}")));
        }
        Ok(Sink::from(Inner::Postgres(Box::new(
            postgres::Postgres::connect(url, schema).await?,
        ))))
    }

    fn from(inner: Inner) -> Sink {
        Sink {
            inner: Arc::new(inner),
            meta_ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// `sqlite:PATH` or `postgres:SCHEMA`.
    pub fn describe(&self) -> String {
        match &*self.inner {
            #[cfg(feature = "sqlite")]
            Inner::Sqlite(s) => format!("sqlite:{}", s.path.display()),
            #[cfg(feature = "postgres")]
            Inner::Postgres(p) => format!("postgres:{}", p.schema),
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match &*self.inner {
            #[cfg(feature = "sqlite")]
            Inner::Sqlite(_) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` on a connection: for SQLite on a blocking thread, for PostgreSQL on this
    /// task.
    pub(crate) async fn exec<T: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(Conn<'c>) -> BoxFuture<'c, Result<T, SinkError>> + Send + 'static,
    ) -> Result<T, SinkError> {
        match &*self.inner {
            #[cfg(feature = "sqlite")]
            Inner::Sqlite(s) => s.exec(f).await,
            #[cfg(feature = "postgres")]
            Inner::Postgres(p) => p.exec(f).await,
        }
    }

    /// Runs `f` in one transaction: committed if it succeeds, else rolled back.
    async fn in_tx<T: Send + 'static>(
        &self,
        f: impl for<'a, 'c> FnOnce(&'a mut Conn<'c>) -> BoxFuture<'a, Result<T, SinkError>>
            + Send
            + 'static,
    ) -> Result<T, SinkError> {
        self.exec(move |mut c| {
            Box::pin(async move {
                c.begin().await?;
                let r = f(&mut c).await;
                c.finish(r).await
            })
        })
        .await
    }

    async fn ensure_meta(&self) -> Result<(), SinkError> {
        if !self.meta_ready.load(Ordering::Acquire) {
            self.in_tx(|c| Box::pin(async move { c.create_meta().await }))
                .await?;
            self.meta_ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Where `projection` stands; `None` before it first ran here.
    pub async fn checkpoint(&self, projection: &str) -> Result<Option<Checkpoint>, SinkError> {
        self.ensure_meta().await?;
        let name = projection.to_string();
        self.exec(move |mut c| Box::pin(async move { c.load(&name, false).await }))
            .await
    }

    /// Every projection this sink holds, by name.
    pub async fn projections(&self) -> Result<Vec<Checkpoint>, SinkError> {
        self.ensure_meta().await?;
        self.exec(|mut c| {
            Box::pin(async move {
                let rows = c.query(&format!("{CHECKPOINT} ORDER BY name"), &[]).await?;
                rows.iter().map(|r| checkpoint_of(r)).collect()
            })
        })
        .await
    }

    /// The events `projection` could not apply, in log order.
    pub async fn failures(&self, projection: &str) -> Result<Vec<Failure>, SinkError> {
        self.ensure_meta().await?;
        let name = projection.to_string();
        self.exec(move |mut c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT name, position, stream_id, revision, event_type, error, \
                         attempts, action, failed_at FROM annal_projection_failures \
                         WHERE name = $1 ORDER BY position",
                        &[Value::Text(name)],
                    )
                    .await?;
                rows.iter().map(|r| failure_of(r)).collect()
            })
        })
        .await
    }

    /// Rows of a query on the read models (`$1`, `$2`... for parameters, in either sink).
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, SinkError> {
        let (sql, params) = (sql.to_string(), params.to_vec());
        self.exec(move |mut c| Box::pin(async move { c.query(&sql, &params).await }))
            .await
    }

    /// Runs a statement outside any projection (a repair by hand, a test's damage); returns
    /// how many rows it changed.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, SinkError> {
        let (sql, params) = (sql.to_string(), params.to_vec());
        self.exec(move |mut c| Box::pin(async move { c.execute(&sql, &params).await }))
            .await
    }

    /// Waits until `projection`'s live tables hold every event up to `position` (read your
    /// writes from another process; a runner in this one answers sooner through
    /// [`Running::wait_for`](super::Running::wait_for)). Polls the checkpoint every few
    /// milliseconds, up to `timeout`.
    pub async fn wait_for(
        &self,
        projection: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<(), super::WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let at = self
                .checkpoint(projection)
                .await?
                .map_or(0, |c| c.next_position);
            if at > position {
                return Ok(());
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(super::WaitError::Timeout {
                    projection: projection.to_string(),
                    position,
                    reached: at.checked_sub(1),
                    waited: timeout,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Makes sure the projection has its row and its live tables; returns where it stands.
    pub(crate) async fn init(
        &self,
        projection: &str,
        version: u32,
        tables: Arc<Vec<Table>>,
    ) -> Result<Checkpoint, SinkError> {
        let name = projection.to_string();
        let cp = self
            .in_tx(move |c| Box::pin(async move { c.init(&name, version, &tables).await }))
            .await?;
        self.meta_ready.store(true, Ordering::Release);
        Ok(cp)
    }

    /// Commits a batch; `false` when the checkpoint had moved (nothing was written).
    pub(crate) async fn commit(&self, batch: Arc<Batch>) -> Result<bool, SinkError> {
        // A batch whose checkpoint had moved wrote nothing: committing it is harmless.
        self.in_tx(move |c| Box::pin(async move { c.commit_batch(&batch).await }))
            .await
    }

    /// Creates empty copies of the tables for `target` (a rebuild's shadow, or the copy a
    /// reconciliation fills). For a shadow, records the rebuild as started at position 0;
    /// `None` when the live generation is no longer `generation`.
    pub(crate) async fn fresh_copy(
        &self,
        projection: &str,
        target: Target,
        version: u32,
        generation: u64,
        tables: Arc<Vec<Table>>,
    ) -> Result<Option<Checkpoint>, SinkError> {
        let name = projection.to_string();
        self.in_tx(move |c| {
            Box::pin(async move {
                c.fresh_copy(&name, target, version, generation, &tables)
                    .await
            })
        })
        .await
    }

    /// Swaps a caught-up shadow copy in for the live tables, in one transaction; `None`
    /// when the rebuild recorded is no longer `version` at `next_position`.
    pub(crate) async fn swap(
        &self,
        projection: &str,
        version: u32,
        next_position: u64,
        tables: Arc<Vec<Table>>,
    ) -> Result<Option<Checkpoint>, SinkError> {
        let name = projection.to_string();
        self.in_tx(move |c| {
            Box::pin(async move { c.swap(&name, version, next_position, &tables).await })
        })
        .await
    }

    /// Compares the live tables with the check copy built up to `next_position`, and with
    /// `repair` makes the live rows equal to the replayed ones, in one transaction that holds
    /// the projection's checkpoint still. `Err(at)` when the checkpoint is no longer there.
    pub(crate) async fn compare(
        &self,
        projection: &str,
        next_position: u64,
        repair: bool,
        tables: Arc<Vec<Table>>,
    ) -> Result<Result<Vec<Difference>, u64>, SinkError> {
        let name = projection.to_string();
        self.in_tx(move |c| {
            Box::pin(async move { c.compare(&name, next_position, repair, &tables).await })
        })
        .await
    }

    /// Drops the copies of the tables for `target`.
    pub(crate) async fn drop_copy(
        &self,
        target: Target,
        tables: Arc<Vec<Table>>,
    ) -> Result<(), SinkError> {
        self.exec(move |mut c| {
            Box::pin(async move {
                for t in tables.iter() {
                    let sql = format!("DROP TABLE IF EXISTS {}", sql::physical(&t.name, target));
                    c.batch(&sql).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Removes a projection: its row, its failures and every copy of its tables.
    pub async fn drop_projection(
        &self,
        projection: &str,
        tables: &[Table],
    ) -> Result<(), SinkError> {
        self.ensure_meta().await?;
        let (name, tables) = (projection.to_string(), tables.to_vec());
        self.in_tx(move |c| {
            Box::pin(async move {
                async {
                    for t in &tables {
                        for target in [Target::Live, Target::Shadow, Target::Check] {
                            let sql =
                                format!("DROP TABLE IF EXISTS {}", sql::physical(&t.name, target));
                            c.batch(&sql).await?;
                        }
                    }
                    for table in ["annal_projections", "annal_projection_failures"] {
                        let sql = format!("DELETE FROM {table} WHERE name = $1");
                        c.execute(&sql, &[Value::Text(name.clone())]).await?;
                    }
                    Ok(())
                }
                .await
            })
        })
        .await
    }
}

const META: &str = "\
CREATE TABLE IF NOT EXISTS annal_projections (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    next_position BIGINT NOT NULL,
    rebuild_version BIGINT,
    rebuild_next BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS annal_projection_failures (
    name TEXT NOT NULL,
    position BIGINT NOT NULL,
    stream_id TEXT NOT NULL,
    revision BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    action TEXT NOT NULL,
    failed_at BIGINT NOT NULL,
    PRIMARY KEY (name, position)
)";

const CHECKPOINT: &str = "SELECT name, version, generation, next_position, rebuild_version, \
                          rebuild_next, updated_at FROM annal_projections";

fn int(v: &Value, what: &str) -> Result<i64, SinkError> {
    v.as_int().ok_or_else(|| {
        SinkError::Invalid(format!("annal_projections: {what} is {v}, not a number"))
    })
}

fn text(v: &Value) -> String {
    v.as_text().unwrap_or_default().to_string()
}

fn checkpoint_of(r: &[Value]) -> Result<Checkpoint, SinkError> {
    let rebuild = match (&r[4], &r[5]) {
        (Value::Int(v), Value::Int(n)) => Some((*v as u32, *n as u64)),
        _ => None,
    };
    Ok(Checkpoint {
        projection: text(&r[0]),
        version: int(&r[1], "version")? as u32,
        generation: int(&r[2], "generation")? as u64,
        next_position: int(&r[3], "next_position")? as u64,
        rebuild,
        updated_at: Timestamp(int(&r[6], "updated_at")?),
    })
}

fn failure_of(r: &[Value]) -> Result<Failure, SinkError> {
    Ok(Failure {
        projection: text(&r[0]),
        position: int(&r[1], "position")? as u64,
        stream_id: text(&r[2]),
        revision: int(&r[3], "revision")? as u64,
        event_type: text(&r[4]),
        error: text(&r[5]),
        attempts: int(&r[6], "attempts")? as u32,
        action: text(&r[7]),
        failed_at: Timestamp(int(&r[8], "failed_at")?),
    })
}

/// What tells a generation's key and index names from the next one's: the live copy and
/// a rebuild's shadow are always one generation apart.
fn generation_tag(generation: u64) -> &'static str {
    if generation.is_multiple_of(2) {
        "a"
    } else {
        "b"
    }
}

/// A key as something to look rows up by.
fn key_of(row: &[Value], width: usize) -> String {
    format!("{:?}", &row[..width])
}

impl Conn<'_> {
    fn dialect(&self) -> Dialect {
        match self {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(_) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Statements without parameters, separated by `;`.
    pub(crate) async fn batch(&mut self, sql: &str) -> Result<(), SinkError> {
        match self {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(c) => sqlite::batch(c, sql),
            #[cfg(feature = "postgres")]
            Conn::Postgres(c) => c.batch(sql).await,
        }
    }

    /// One statement, `$n` for its parameters; how many rows it changed.
    pub(crate) async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, SinkError> {
        match self {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(c) => sqlite::execute(c, &sql::placeholders(sql), params),
            #[cfg(feature = "postgres")]
            Conn::Postgres(c) => c.execute(sql, params).await,
        }
    }

    /// Statements already written for this sink, in order (pipelined on PostgreSQL).
    async fn execute_all(&mut self, stmts: &[Stmt]) -> Result<(), SinkError> {
        match self {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(c) => {
                for (sql, params) in stmts {
                    sqlite::execute(c, sql, params)?;
                }
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Conn::Postgres(c) => c.execute_all(stmts).await,
        }
    }

    pub(crate) async fn query(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<Vec<Value>>, SinkError> {
        match self {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(c) => sqlite::query(c, &sql::placeholders(sql), params),
            #[cfg(feature = "postgres")]
            Conn::Postgres(c) => c.query(sql, params).await,
        }
    }

    async fn begin(&mut self) -> Result<(), SinkError> {
        match self.dialect() {
            // Take the write lock now, not at the first write: a transaction that read first
            // could not upgrade while another connection writes.
            Dialect::Sqlite => self.batch("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.batch("BEGIN").await,
        }
    }

    async fn rollback(&mut self) {
        if let Err(e) = self.batch("ROLLBACK").await {
            tracing::warn!(error = %e, "rolling back a read-model transaction failed");
        }
    }

    /// Commits when `r` is a success, else rolls back; returns `r`.
    async fn finish<T>(&mut self, r: Result<T, SinkError>) -> Result<T, SinkError> {
        match r {
            Ok(v) => {
                self.batch("COMMIT").await?;
                Ok(v)
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    async fn create_meta(&mut self) -> Result<(), SinkError> {
        if self.dialect() == Dialect::Postgres {
            // Two runners starting at once would both try to create the tables.
            self.batch("SELECT pg_advisory_xact_lock(7263540138)")
                .await?;
        }
        self.batch(META).await
    }

    async fn load(&mut self, name: &str, lock: bool) -> Result<Option<Checkpoint>, SinkError> {
        let lock = if lock && self.dialect() == Dialect::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let rows = self
            .query(
                &format!("{CHECKPOINT} WHERE name = $1{lock}"),
                &[Value::Text(name.to_string())],
            )
            .await?;
        rows.first().map(|r| checkpoint_of(r)).transpose()
    }

    async fn create_copy(
        &mut self,
        tables: &[Table],
        target: Target,
        tag: &str,
    ) -> Result<(), SinkError> {
        let d = self.dialect();
        for t in tables {
            self.batch(&format!(
                "DROP TABLE IF EXISTS {}",
                sql::physical(&t.name, target)
            ))
            .await?;
            for s in sql::create_table(t, target, tag, d) {
                self.batch(&s).await?;
            }
        }
        Ok(())
    }

    async fn init(
        &mut self,
        name: &str,
        version: u32,
        tables: &[Table],
    ) -> Result<Checkpoint, SinkError> {
        self.create_meta().await?;
        if let Some(cp) = self.load(name, true).await? {
            return Ok(cp);
        }
        self.create_copy(tables, Target::Live, generation_tag(0))
            .await?;
        self.execute(
            "INSERT INTO annal_projections (name, version, generation, next_position, \
             updated_at) VALUES ($1, $2, 0, 0, $3)",
            &[
                Value::Text(name.to_string()),
                version.into(),
                Timestamp::now().into(),
            ],
        )
        .await?;
        Ok(self.load(name, false).await?.expect("the row just written"))
    }

    async fn commit_batch(&mut self, b: &Batch) -> Result<bool, SinkError> {
        let params = [
            Value::from(b.to),
            Value::from(Timestamp::now()),
            Value::Text(b.projection.clone()),
            Value::from(b.guard),
            Value::from(b.from),
        ];
        // The checkpoint row first: it is the lock that orders every writer of the
        // projection (runners, a swap, a repair).
        let moved = match b.target {
            Target::Live => {
                self.execute(
                    "UPDATE annal_projections SET next_position = $1, updated_at = $2 \
                     WHERE name = $3 AND generation = $4 AND next_position = $5",
                    &params,
                )
                .await?
            }
            Target::Shadow => {
                self.execute(
                    "UPDATE annal_projections SET rebuild_next = $1, updated_at = $2 \
                     WHERE name = $3 AND rebuild_version = $4 AND rebuild_next = $5",
                    &params,
                )
                .await?
            }
            Target::Check => 1,
        };
        if moved == 0 {
            return Ok(false);
        }
        self.execute_all(&b.stmts).await?;
        // A reconciliation's replay leaves the projection's failure log as it is.
        let failures = if b.target == Target::Check {
            &[][..]
        } else {
            &b.failures[..]
        };
        for f in failures {
            self.execute(
                "INSERT INTO annal_projection_failures (name, position, stream_id, revision, \
                 event_type, error, attempts, action, failed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (name, position) DO UPDATE SET error = excluded.error, \
                 attempts = excluded.attempts, action = excluded.action, \
                 failed_at = excluded.failed_at",
                &[
                    Value::Text(f.projection.clone()),
                    f.position.into(),
                    Value::Text(f.stream_id.clone()),
                    f.revision.into(),
                    Value::Text(f.event_type.clone()),
                    Value::Text(f.error.clone()),
                    f.attempts.into(),
                    Value::Text(f.action.clone()),
                    f.failed_at.into(),
                ],
            )
            .await?;
        }
        Ok(true)
    }

    async fn fresh_copy(
        &mut self,
        name: &str,
        target: Target,
        version: u32,
        generation: u64,
        tables: &[Table],
    ) -> Result<Option<Checkpoint>, SinkError> {
        let Some(cp) = self.load(name, true).await? else {
            return Err(SinkError::Invalid(format!(
                "no projection '{name}' in this sink"
            )));
        };
        if cp.generation != generation {
            return Ok(None);
        }
        if target == Target::Check {
            self.create_copy(tables, target, "check").await?;
            return Ok(Some(cp));
        }
        self.create_copy(tables, target, generation_tag(generation + 1))
            .await?;
        self.execute(
            "UPDATE annal_projections SET rebuild_version = $1, rebuild_next = 0, \
             updated_at = $2 WHERE name = $3",
            &[
                version.into(),
                Timestamp::now().into(),
                Value::Text(name.to_string()),
            ],
        )
        .await?;
        self.load(name, false).await
    }

    async fn swap(
        &mut self,
        name: &str,
        version: u32,
        next_position: u64,
        tables: &[Table],
    ) -> Result<Option<Checkpoint>, SinkError> {
        let Some(cp) = self.load(name, true).await? else {
            return Ok(None);
        };
        if cp.rebuild != Some((version, next_position)) {
            return Ok(None);
        }
        for t in tables {
            let live = sql::physical(&t.name, Target::Live);
            let shadow = sql::physical(&t.name, Target::Shadow);
            self.batch(&format!("DROP TABLE IF EXISTS {live}")).await?;
            self.batch(&format!("ALTER TABLE {shadow} RENAME TO {live}"))
                .await?;
        }
        self.execute(
            "UPDATE annal_projections SET version = rebuild_version, \
             generation = generation + 1, next_position = rebuild_next, \
             rebuild_version = NULL, rebuild_next = NULL, updated_at = $1 WHERE name = $2",
            &[Timestamp::now().into(), Value::Text(name.to_string())],
        )
        .await?;
        self.load(name, false).await
    }

    async fn compare(
        &mut self,
        name: &str,
        next_position: u64,
        repair: bool,
        tables: &[Table],
    ) -> Result<Result<Vec<Difference>, u64>, SinkError> {
        let Some(cp) = self.load(name, true).await? else {
            return Err(SinkError::Invalid(format!(
                "no projection '{name}' in this sink"
            )));
        };
        if cp.next_position != next_position {
            return Ok(Err(cp.next_position));
        }
        let mut out = Vec::new();
        for t in tables {
            let live = self.query(&sql::select_all(t, Target::Live), &[]).await?;
            let replayed = self.query(&sql::select_all(t, Target::Check), &[]).await?;
            let diffs = differences(t, live, replayed);
            if repair {
                for x in &diffs {
                    match &x.replayed {
                        Some(row) => {
                            self.execute(&sql::upsert(t, Target::Live, Dialect::Postgres), row)
                                .await?
                        }
                        None => {
                            self.execute(&sql::delete(t, Target::Live, Dialect::Postgres), &x.key)
                                .await?
                        }
                    };
                }
            }
            out.extend(diffs);
        }
        Ok(Ok(out))
    }
}

/// The rows that differ between a live table and its replay, ordered by key.
fn differences(t: &Table, live: Vec<Vec<Value>>, replayed: Vec<Vec<Value>>) -> Vec<Difference> {
    let mut live: std::collections::HashMap<String, Vec<Value>> =
        live.into_iter().map(|r| (key_of(&r, t.key), r)).collect();
    let mut out = Vec::new();
    for r in replayed {
        let k = key_of(&r, t.key);
        match live.remove(&k) {
            None => out.push((
                k,
                Difference {
                    table: t.name.clone(),
                    key: r[..t.key].to_vec(),
                    kind: DifferenceKind::Missing,
                    live: None,
                    replayed: Some(r),
                },
            )),
            Some(l) if l != r => {
                let columns = t
                    .columns
                    .iter()
                    .zip(l.iter().zip(&r))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(c, _)| c.name.clone())
                    .collect();
                out.push((
                    k,
                    Difference {
                        table: t.name.clone(),
                        key: r[..t.key].to_vec(),
                        kind: DifferenceKind::Different(columns),
                        live: Some(l),
                        replayed: Some(r),
                    },
                ));
            }
            Some(_) => {}
        }
    }
    out.extend(live.into_iter().map(|(k, l)| {
        (
            k,
            Difference {
                table: t.name.clone(),
                key: l[..t.key].to_vec(),
                kind: DifferenceKind::Extra,
                live: Some(l),
                replayed: None,
            },
        )
    }));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, d)| d).collect()
}
