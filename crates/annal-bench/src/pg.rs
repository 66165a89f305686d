//! The same workloads against PostgreSQL with the classic hand-rolled `events` table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annal_core::next_item;
use tokio_postgres::{Client, NoTls};

use crate::stats::payload;
use crate::Progress;

/// The table teams build by hand: a global position, a unique (stream, revision) for
/// optimistic concurrency, a unique event id for idempotency, and JSONB data.
const SCHEMA: &str = "
CREATE TABLE events (
    position    bigserial PRIMARY KEY,
    stream_id   text        NOT NULL,
    revision    bigint      NOT NULL,
    event_id    uuid        NOT NULL UNIQUE,
    event_type  text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, revision)
);";

/// A database of its own for one benchmark run, dropped at the end.
pub struct PgBench {
    admin_url: String,
    db: String,
    url: String,
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `url` with its database name replaced.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|s| base[s..].find('/').map(|j| s + j))
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..authority_end])
}

impl PgBench {
    /// Connects and creates a fresh database; `Err` when PostgreSQL does not answer.
    pub async fn create(url: &str) -> anyhow::Result<PgBench> {
        let admin = connect(url).await?;
        let db = format!("annal_bench_{}", std::process::id());
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await?;
        let url_db = with_db(url, &db);
        let c = connect(&url_db).await?;
        c.batch_execute(SCHEMA).await?;
        c.batch_execute("SET synchronous_commit = on").await?;
        Ok(PgBench {
            admin_url: url.to_string(),
            db,
            url: url_db,
        })
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let c = connect(&self.url).await?;
        c.batch_execute("SET synchronous_commit = on").await?;
        Ok(c)
    }

    /// The server's version and its durability settings, for the report.
    pub async fn describe(&self) -> anyhow::Result<String> {
        let c = self.client().await?;
        let v: String = c.query_one("SHOW server_version", &[]).await?.get(0);
        let fsync: String = c.query_one("SHOW fsync", &[]).await?.get(0);
        let sc: String = c.query_one("SHOW synchronous_commit", &[]).await?.get(0);
        Ok(format!(
            "PostgreSQL {v} (fsync={fsync}, synchronous_commit={sc})"
        ))
    }

    pub async fn truncate(&self) -> anyhow::Result<()> {
        self.client()
            .await?
            .batch_execute("TRUNCATE events RESTART IDENTITY")
            .await?;
        Ok(())
    }

    pub async fn drop_db(self) -> anyhow::Result<()> {
        let admin = connect(&self.admin_url).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db))
            .await?;
        Ok(())
    }
}

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO events (stream_id, revision, event_id, event_type, data) VALUES ",
    );
    for r in 0..rows {
        let b = r * 5;
        if r > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}::text::uuid, ${}, ${}::text::jsonb)",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5
        ));
    }
    sql
}

/// W1/W2 against PostgreSQL: `writers` connections, each on its own 8 streams, inserting
/// `batch` rows per statement (one transaction) with explicit revisions.
pub async fn appends(
    pg: &PgBench,
    tag: &str,
    writers: usize,
    batch: usize,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<f64> {
    let sql = Arc::new(insert_sql(batch));
    let mut clients = Vec::new();
    for _ in 0..writers {
        clients.push(pg.client().await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (w, client) in clients.into_iter().enumerate() {
        let (sql, tag, progress) = (sql.clone(), tag.to_string(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let stmt = client.prepare(&sql).await?;
            let mut revs = [0i64; 8];
            let mut n = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let k = (i % 8) as usize;
                let stream = format!("{tag}-{w}-{k}");
                let mut values: Vec<(i64, String, String)> = Vec::with_capacity(batch);
                for j in 0..batch {
                    let data = String::from_utf8(payload(i * batch as u64 + j as u64))?;
                    values.push((
                        revs[k] + j as i64,
                        annal_core::Uuid::new_v4().to_string(),
                        data,
                    ));
                }
                let ty = "Deposited";
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    Vec::with_capacity(batch * 5);
                for (rev, id, data) in &values {
                    params.push(&stream);
                    params.push(rev);
                    params.push(id);
                    params.push(&ty);
                    params.push(data);
                }
                client.execute(&stmt, &params).await?;
                revs[k] += batch as i64;
                n += batch as u64;
                i += 1;
                progress.inc(batch as u64);
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    crate::per_second(tasks, start).await
}

const PAYLOAD_SQL: &str = "('{\"account\":\"acc-' || lpad((g % 100000)::text, 8, '0') || '\",\"amount\":' || ((g * 7919) % 100000) || ',\"currency\":\"EUR\",\"reference\":\"invoice ' || g || ' for services rendered\",\"note\":\"' || repeat('x', 120) || '\"}')::jsonb";

/// Fills the table server-side: `events` rows over `streams` streams, in chunks.
pub async fn fill(
    pg: &PgBench,
    prefix: &str,
    events: u64,
    streams: u64,
    progress: &Progress,
) -> anyhow::Result<()> {
    let c = pg.client().await?;
    let chunk = 500_000u64;
    let mut from = 0;
    while from < events {
        let to = (from + chunk).min(events) - 1;
        let sql = format!(
            "INSERT INTO events (stream_id, revision, event_id, event_type, data) \
             SELECT '{prefix}-' || (g % {streams}), g / {streams}, gen_random_uuid(), 'Deposited', {PAYLOAD_SQL} \
             FROM generate_series({from}::bigint, {to}::bigint) g"
        );
        c.batch_execute(&sql).await?;
        progress.inc(to + 1 - from);
        from = to + 1;
    }
    c.batch_execute("VACUUM ANALYZE events").await?;
    Ok(())
}

const SELECT: &str = "SELECT position, stream_id, revision, event_id::text, event_type, data::text, recorded_at::text FROM events";

/// Streams rows of a query, touching every field as the store's reads do.
async fn read_rows(c: &Client, sql: &str, params: &[String]) -> anyhow::Result<u64> {
    let rows = c.query_raw(sql, params.iter()).await?;
    let mut rows = Box::pin(rows);
    let mut n = 0u64;
    while let Some(row) = next_item(&mut rows).await {
        let row = row?;
        let position: i64 = row.get(0);
        let stream: &str = row.get(1);
        let data: &str = row.get(5);
        std::hint::black_box((position, stream.len(), data.len()));
        n += 1;
    }
    Ok(n)
}

/// W3 set-up: a stream of 10,000 rows interleaved with another stream's.
pub async fn fill_w3(pg: &PgBench) -> anyhow::Result<()> {
    let c = pg.client().await?;
    let sql = format!(
        "INSERT INTO events (stream_id, revision, event_id, event_type, data) \
         SELECT CASE WHEN g % 2 = 0 THEN 'w3-target' ELSE 'w3-noise' END, g / 2, gen_random_uuid(), 'Deposited', {PAYLOAD_SQL} \
         FROM generate_series(0::bigint, 19999::bigint) g"
    );
    c.batch_execute(&sql).await?;
    c.batch_execute("ANALYZE events").await?;
    Ok(())
}

/// W3 against PostgreSQL.
pub async fn read_stream(pg: &PgBench, reps: u32, progress: &Progress) -> anyhow::Result<f64> {
    let c = pg.client().await?;
    let sql = format!("{SELECT} WHERE stream_id = $1 ORDER BY revision");
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..reps {
        n += read_rows(&c, &sql, &["w3-target".to_string()]).await?;
        progress.inc(10_000);
    }
    anyhow::ensure!(n == 10_000 * u64::from(reps), "read {n} rows");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// W4 against PostgreSQL: the whole table in position order.
pub async fn read_all(pg: &PgBench, expect: u64) -> anyhow::Result<f64> {
    let c = pg.client().await?;
    let sql = format!("{SELECT} ORDER BY position");
    let start = Instant::now();
    let n = read_rows(&c, &sql, &[]).await?;
    anyhow::ensure!(n == expect, "read {n} rows, expected {expect}");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_db("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(with_db("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_db("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }

    #[test]
    fn insert_statement_numbers_parameters() {
        let sql = insert_sql(2);
        assert!(
            sql.ends_with("($6, $7, $8::text::uuid, $9, $10::text::jsonb)"),
            "{sql}"
        );
    }
}
