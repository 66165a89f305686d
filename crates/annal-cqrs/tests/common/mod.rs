//! What the toolkit's tests share: a bank account written as a decider, and the two stores
//! every check runs on (the embedded engine, and a client of a server over loopback).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use annal_client::Client;
use annal_core::{
    AppendRequest, AppendResult, CategoryInfo, Error, EventStore, EventStream, ExpectedRevision,
    ListCategories, ListStreams, ReadRequest, Result, StreamInfo, SubscribeRequest,
    SubscriptionStream, Timestamp,
};
use annal_cqrs::{to_new, Context};
use annal_engine::Store;
use annal_server::{Config, Server};

// The bank account of docs/guide.md.
include!("../../guide/account.rs");

#[allow(unused_imports)]
pub use Command as AccountCommand;

/// A snapshot policy for the bank account, of a test's choosing.
pub trait AccountSnapshots: Send + Sync + 'static {
    fn snapshots() -> Option<annal_cqrs::Snapshotting<Account>>;
}

/// The bank account with the snapshot policy `P` instead of its own.
pub struct Snapped<P>(std::marker::PhantomData<P>);

impl<P: AccountSnapshots> Decider for Snapped<P> {
    const CATEGORY: &'static str = BankAccount::CATEGORY;
    type State = Account;
    type Command = Command;
    type Event = AccountEvent;
    type Error = Refused;

    fn decide(s: &Account, c: &Command) -> std::result::Result<Vec<AccountEvent>, Refused> {
        BankAccount::decide(s, c)
    }

    fn evolve(s: Account, e: &AccountEvent) -> Account {
        BankAccount::evolve(s, e)
    }

    fn snapshots() -> Option<annal_cqrs::Snapshotting<Account>> {
        P::snapshots()
    }
}

/// The embedded engine in a folder of its own.
pub struct Embedded {
    pub store: Arc<Store>,
    _dir: tempfile::TempDir,
}

pub fn embedded() -> Embedded {
    let dir = tempfile::tempdir().unwrap();
    Embedded {
        store: Arc::new(Store::open(dir.path()).unwrap()),
        _dir: dir,
    }
}

/// A server of the test's own on a port the system picks, shut down when dropped.
pub struct Served {
    pub client: Client,
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(server.shutdown())
            })
            .unwrap();
        }
    }
}

impl Served {
    /// The server's address, for another process to connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.as_ref().unwrap().local_addr())
    }
}

pub async fn served() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let server = Server::start(config).await.unwrap();
    let client = Client::builder(format!("http://{}", server.local_addr()))
        .connect()
        .await
        .unwrap();
    Served {
        client,
        server: Some(server),
        _dir: dir,
    }
}

/// Emits, for each named check `async fn name<S: EventStore + Clone + 'static>(store: S)`,
/// one test on the embedded engine and one through a client of a server.
#[macro_export]
macro_rules! both_ways {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let e = $crate::common::embedded();
                    super::$name(e.store.clone()).await;
                }
            )*
        }
        mod served {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let s = $crate::common::served().await;
                    super::$name(s.client.clone()).await;
                }
            )*
        }
    };
}

/// A store where another writer appends `other` to the same stream just before each of the
/// first `races` appends it forwards, so that they conflict. Clones share their schedule.
#[derive(Clone)]
pub struct Racing<S> {
    inner: S,
    /// Races still to run.
    races: Arc<AtomicU32>,
    other: Arc<std::sync::Mutex<AccountEvent>>,
    pub appends: Arc<AtomicU32>,
}

impl<S: EventStore> Racing<S> {
    pub fn new(inner: S, races: u32, other: AccountEvent) -> Self {
        Racing {
            inner,
            races: Arc::new(AtomicU32::new(races)),
            other: Arc::new(std::sync::Mutex::new(other)),
            appends: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Races the next `races` appends with `other`, counting appends from 0 again.
    #[allow(dead_code)] // not every test file schedules races again
    pub fn again(&self, races: u32, other: AccountEvent) {
        self.races.store(races, Ordering::SeqCst);
        *self.other.lock().unwrap() = other;
        self.appends.store(0, Ordering::SeqCst);
    }
}

/// A store that loses the answer to the first `left` appends after they are written.
#[derive(Clone)]
pub struct Dropping<S> {
    pub inner: S,
    pub left: Arc<AtomicU32>,
}

impl<S: EventStore> Forward for Racing<S> {
    type Inner = S;
    fn inner(&self) -> &S {
        &self.inner
    }
    async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        let race = self
            .races
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if race {
            let stream = request.streams[0].stream_id.clone();
            let other = self.other.lock().unwrap().clone();
            let other = to_new(std::slice::from_ref(&other), &Context::new()).expect("encodes");
            self.inner
                .append(AppendRequest::stream(stream, ExpectedRevision::Any, other))
                .await?;
        }
        self.inner.append(request).await
    }
}

impl<S: EventStore> Forward for Dropping<S> {
    type Inner = S;
    fn inner(&self) -> &S {
        &self.inner
    }
    async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        let r = self.inner.append(request).await?;
        let lose = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            return Err(Error::Unavailable("the answer was lost".into()));
        }
        Ok(r)
    }
}

/// A store that changes appends and forwards the rest.
trait Forward: Send + Sync {
    type Inner: EventStore;
    fn inner(&self) -> &Self::Inner;
    fn append(
        &self,
        request: AppendRequest,
    ) -> impl std::future::Future<Output = Result<AppendResult>> + Send;
}

macro_rules! forwarding_store {
    ($t:ident) => {
        impl<S: EventStore> EventStore for $t<S> {
            async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
                Forward::append(self, request).await
            }
            async fn read(&self, request: ReadRequest) -> Result<EventStream> {
                self.inner().read(request).await
            }
            async fn subscribe(&self, request: SubscribeRequest) -> Result<SubscriptionStream> {
                self.inner().subscribe(request).await
            }
            async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
                self.inner().stream_info(stream_id).await
            }
            async fn list_streams(&self, request: ListStreams) -> Result<Vec<StreamInfo>> {
                self.inner().list_streams(request).await
            }
            async fn list_categories(&self, request: ListCategories) -> Result<Vec<CategoryInfo>> {
                self.inner().list_categories(request).await
            }
            async fn position_at(&self, at: Timestamp) -> Result<Option<u64>> {
                self.inner().position_at(at).await
            }
            async fn head(&self) -> Result<Option<u64>> {
                self.inner().head().await
            }
            async fn put_snapshot(&self, snapshot: annal_core::NewSnapshot) -> Result<()> {
                self.inner().put_snapshot(snapshot).await
            }
            async fn get_snapshot(
                &self,
                stream_id: &str,
                at_or_before: Option<u64>,
            ) -> Result<Option<annal_core::Snapshot>> {
                self.inner().get_snapshot(stream_id, at_or_before).await
            }
            async fn delete_snapshots(&self, stream_id: &str) -> Result<u64> {
                self.inner().delete_snapshots(stream_id).await
            }
        }
    };
}

forwarding_store!(Racing);
forwarding_store!(Dropping);

/// PostgreSQL on this machine, for the read models of the tests.
pub const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A PostgreSQL schema of a test's own, dropped when the guard is: by `drop_now` at the end
/// of a test that passed, or by `Drop` when the test panicked first, so that no failed run
/// leaves its tables in the shared server.
pub struct Schema(Option<String>);

impl Schema {
    pub fn new(name: String) -> Schema {
        Schema(Some(name))
    }

    pub fn name(&self) -> &str {
        self.0.as_deref().expect("not dropped yet")
    }

    /// Drops the schema now, failing the test if PostgreSQL refuses.
    pub async fn drop_now(mut self) {
        let name = self.0.take().expect("not dropped yet");
        drop_schema(&name).await.unwrap();
    }
}

async fn drop_schema(name: &str) -> Result<(), annal_cqrs::projection::SinkError> {
    let sink = annal_cqrs::projection::Sink::postgres(PG, name).await?;
    sink.execute(&format!("DROP SCHEMA {name} CASCADE"), &[])
        .await
        .map(drop)
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            // This thread may be inside the test's runtime: drop it from a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(drop_schema(&name)).ok()
            })
            .join();
        }
    }
}
