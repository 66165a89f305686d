//! What the example applications share: where their events and read models live (an
//! embedded store or a server; SQLite or PostgreSQL), a rebuild shown as a progress bar, and
//! reconciliation and failure reports for people.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use annal_client::Client;
use annal_core::{
    AppendRequest, AppendResult, CategoryInfo, EventStore, EventStream, ListCategories,
    ListStreams, NewSnapshot, ReadRequest, Result, Snapshot, StreamInfo, SubscribeRequest,
    SubscriptionStream, Timestamp,
};
use annal_cqrs::projection::{
    Checkpoint, DifferenceKind, Failure, Projection, Reconciled, Runner, Sink, Value,
};
use annal_engine::Store;

/// Where an example keeps its events and read models.
#[derive(Debug, Clone, clap::Args)]
pub struct Where {
    /// Keep events (and the SQLite read models) in this folder. Without it, a new temporary
    /// folder, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Use the Annal server at this URL (http://HOST:PORT) instead of an embedded store.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Keep read models in this PostgreSQL database ("host=127.0.0.1 user=postgres
    /// dbname=test") instead of SQLite.
    #[arg(long, value_name = "CONNINFO")]
    pub postgres: Option<String>,
    /// The PostgreSQL schema for the read models (default: the example's name).
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
}

/// An example's events and read models, open.
pub struct Place {
    pub store: AnyStore,
    pub sink: Sink,
    /// `embedded` or the server's URL.
    pub store_name: String,
    /// The server started in this process, if any.
    pub server: Option<annal_server::Server>,
    _temporary: Option<tempfile::TempDir>,
}

impl Place {
    /// Stops the server started in this process, if any.
    pub async fn close(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.server.take() {
            s.shutdown().await?;
        }
        Ok(())
    }
}

impl Where {
    /// Opens the store and the sink; `example` names the default schema.
    pub async fn open(&self, example: &str) -> anyhow::Result<Place> {
        self.open_as(example, false).await
    }

    /// As [`Where::open`], but without `--server` the embedded store is served in this
    /// process on a loopback port, for what only a server does (consumer groups); the
    /// store is then a client of it.
    pub async fn open_served(&self, example: &str) -> anyhow::Result<Place> {
        self.open_as(example, true).await
    }

    async fn open_as(&self, example: &str, serve: bool) -> anyhow::Result<Place> {
        let temporary = match &self.data {
            Some(_) => None,
            None => Some(tempfile::tempdir()?),
        };
        let dir = self
            .data
            .clone()
            .unwrap_or_else(|| temporary.as_ref().unwrap().path().to_path_buf());
        std::fs::create_dir_all(&dir)?;
        let mut server = None;
        let (store, store_name) = match &self.server {
            None if serve => {
                let config = annal_server::Config::new(dir.join("events"), "127.0.0.1:0".parse()?);
                let s = annal_server::Server::start(config).await?;
                let client = Client::builder(format!("http://{}", s.local_addr()))
                    .connect()
                    .await?;
                server = Some(s);
                (AnyStore::Remote(client), "embedded".to_string())
            }
            Some(url) => {
                let client = Client::builder(url.as_str())
                    .connect()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reach the server at {url}: {e}"))?;
                (AnyStore::Remote(client), url.clone())
            }
            None => {
                let events = dir.join("events");
                let store = Store::open(&events).map_err(|e| {
                    anyhow::anyhow!("cannot open the store in {}: {e}", events.display())
                })?;
                (AnyStore::Embedded(Arc::new(store)), "embedded".to_string())
            }
        };
        let sink = match &self.postgres {
            Some(url) => {
                let schema = self
                    .schema
                    .clone()
                    .unwrap_or_else(|| example.replace('-', "_"));
                Sink::postgres(url, &schema).await?
            }
            None => Sink::sqlite(dir.join("read-models.db"))?,
        };
        Ok(Place {
            store,
            sink,
            store_name,
            server,
            _temporary: temporary,
        })
    }
}

/// The embedded engine or a client of a server, behind one type.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per program, cloned rarely
pub enum AnyStore {
    Embedded(Arc<Store>),
    Remote(Client),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Embedded($s) => $e,
            AnyStore::Remote($s) => $e,
        }
    };
}

impl EventStore for AnyStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        each!(self, s => s.append(request).await)
    }
    async fn read(&self, request: ReadRequest) -> Result<EventStream> {
        each!(self, s => s.read(request).await)
    }
    async fn subscribe(&self, request: SubscribeRequest) -> Result<SubscriptionStream> {
        each!(self, s => s.subscribe(request).await)
    }
    async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        each!(self, s => s.stream_info(stream_id).await)
    }
    async fn list_streams(&self, request: ListStreams) -> Result<Vec<StreamInfo>> {
        each!(self, s => s.list_streams(request).await)
    }
    async fn list_categories(&self, request: ListCategories) -> Result<Vec<CategoryInfo>> {
        each!(self, s => s.list_categories(request).await)
    }
    async fn position_at(&self, at: Timestamp) -> Result<Option<u64>> {
        each!(self, s => s.position_at(at).await)
    }
    async fn head(&self) -> Result<Option<u64>> {
        each!(self, s => s.head().await)
    }
    async fn put_snapshot(&self, snapshot: NewSnapshot) -> Result<()> {
        each!(self, s => s.put_snapshot(snapshot).await)
    }
    async fn get_snapshot(
        &self,
        stream_id: &str,
        at_or_before: Option<u64>,
    ) -> Result<Option<Snapshot>> {
        each!(self, s => s.get_snapshot(stream_id, at_or_before).await)
    }
    async fn delete_snapshots(&self, stream_id: &str) -> Result<u64> {
        each!(self, s => s.delete_snapshots(stream_id).await)
    }
}

/// Rebuilds a projection with a progress bar on the terminal (position, events per second,
/// time left); returns the new checkpoint.
pub async fn rebuild_with_progress<S, P>(runner: Runner<S, P>) -> anyhow::Result<Checkpoint>
where
    S: EventStore + 'static,
    P: Projection,
{
    let mut status = runner.watch();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} positions, {per_sec}, {eta} left",
        )?
        .progress_chars("=> "),
    );
    bar.set_prefix("rebuilding");
    let shown = bar.clone();
    let show = tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let s = status.borrow_and_update().clone();
            if let Some(h) = s.head {
                shown.set_length(h + 1);
            }
            shown.set_position(s.rebuilding.unwrap_or(s.checkpoint));
        }
    });
    let r = runner.rebuild().await;
    show.abort();
    bar.finish_and_clear();
    Ok(r?)
}

/// What every example can do to a read model of its own.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum Maintain {
    /// Replay the log into a fresh copy of the read model and swap it in.
    Rebuild,
    /// Compare the read model with a replay of the log; `--repair` fixes what differs.
    Reconcile {
        #[arg(long)]
        repair: bool,
    },
    /// Events the read model could not apply.
    Failures,
}

/// Does `what` to the read model of `projection`, and prints what came of it.
pub async fn maintain<S, P>(
    what: Maintain,
    store: S,
    sink: Sink,
    projection: P,
) -> anyhow::Result<()>
where
    S: EventStore + 'static,
    P: Projection,
{
    let name = projection.name().to_string();
    match what {
        Maintain::Rebuild => {
            let cp = rebuild_with_progress(Runner::new(store, sink, projection)).await?;
            println!(
                "{name} rebuilt: version {}, through position {}",
                cp.version,
                cp.position().map_or("none".into(), |p| p.to_string())
            );
        }
        Maintain::Reconcile { repair } => {
            let r = Runner::new(store, sink, projection)
                .reconcile(repair)
                .await?;
            print!("{}", render_reconciled(&r));
        }
        Maintain::Failures => print!("{}", render_failures(&name, &sink.failures(&name).await?)),
    }
    Ok(())
}

fn row(values: &[Value]) -> String {
    let v: Vec<String> = values.iter().map(Value::to_string).collect();
    format!("({})", v.join(", "))
}

/// A reconciliation's report, a line per row that differs.
pub fn render_reconciled(r: &Reconciled) -> String {
    let mut out = format!(
        "{}: compared with a replay of positions 0 to {}: ",
        r.projection,
        r.next_position.saturating_sub(1)
    );
    if r.differences.is_empty() {
        out.push_str("no differences\n");
        return out;
    }
    out.push_str(&format!("{} rows differ\n", r.differences.len()));
    for d in &r.differences {
        let key = row(&d.key);
        let line = match &d.kind {
            DifferenceKind::Missing => format!(
                "  missing    {} {key}: the replay has {}",
                d.table,
                row(d.replayed.as_deref().unwrap_or_default())
            ),
            DifferenceKind::Extra => format!(
                "  extra      {} {key}: the log has no such row, live holds {}",
                d.table,
                row(d.live.as_deref().unwrap_or_default())
            ),
            DifferenceKind::Different(columns) => format!(
                "  different  {} {key} in {}: live {}, replay {}",
                d.table,
                columns.join(", "),
                row(d.live.as_deref().unwrap_or_default()),
                row(d.replayed.as_deref().unwrap_or_default())
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    if r.repaired {
        out.push_str("  repaired: the live rows now equal the replay\n");
    }
    out
}

/// The events a projection could not apply, a line each.
pub fn render_failures(projection: &str, failures: &[Failure]) -> String {
    if failures.is_empty() {
        return format!("{projection}: no failed events\n");
    }
    let mut out = format!("{projection}: {} failed events\n", failures.len());
    for f in failures {
        out.push_str(&format!(
            "  position {} {}@{} {} ({}, {} attempts): {}\n",
            f.position, f.stream_id, f.revision, f.event_type, f.action, f.attempts, f.error
        ));
    }
    out
}

/// How long the examples wait for a read model to catch up with a write.
pub const READ_YOUR_WRITES: Duration = Duration::from_secs(30);

/// What the examples' tests share: running the example's binary and reading its output.
pub mod testing {
    use std::process::{Command, Output};

    /// PostgreSQL on this machine, for the tests' read models.
    pub const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

    /// Runs the example binary at `bin` with `args`.
    pub fn run(bin: &str, args: &[&str]) -> Output {
        Command::new(bin).args(args).output().unwrap()
    }

    /// What a run printed, once it is known to have succeeded.
    pub fn stdout(o: &Output) -> String {
        assert!(
            o.status.success(),
            "failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout.clone()).unwrap()
    }

    /// Runs the example's story twice against a server of its own, into a PostgreSQL
    /// schema of its own (dropped after); returns the server's URL and both outputs.
    pub async fn twice_against_a_server(bin: &'static str) -> (String, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let config = annal_server::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        let server = annal_server::Server::start(config).await.unwrap();
        let url = format!("http://{}", server.local_addr());
        let schema = format!("example_{}_{}", std::process::id(), fastrand_u16());
        let args: Vec<String> = ["--server", &url, "--postgres", PG, "--schema", &schema]
            .iter()
            .map(|a| a.to_string())
            .collect();
        let mut outs = Vec::new();
        for _ in 0..2 {
            let args = args.clone();
            let out = tokio::task::spawn_blocking(move || {
                run(bin, &args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap();
            outs.push(stdout(&out));
        }
        let sink = annal_cqrs::projection::Sink::postgres(PG, &schema)
            .await
            .unwrap();
        sink.execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        (url, outs)
    }

    fn fastrand_u16() -> u16 {
        annal_core::Timestamp::now().as_micros() as u16
    }
}
