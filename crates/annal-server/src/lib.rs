//! Annal's server: the embedded engine behind gRPC (`annal.v1`) and HTTP/JSON on one port,
//! with Server-Sent Events for subscriptions, an OpenAPI document, bearer-token
//! authentication, TLS, Prometheus metrics, health and readiness.
//!
//! [`Server::start`] opens the store, binds the port and serves until [`Server::shutdown`]
//! (or a signal, in the binary): it stops accepting, lets requests in flight finish (appends
//! are durable before they are answered), ends subscriptions, and closes the store.
//!
//! Memory stays bounded under load: reads and subscriptions stream in batches through bounded
//! queues (a slow reader pauses its producer rather than buffering), appends being processed
//! hold at most `max_inflight_append_bytes`, and connections, HTTP/2 streams and
//! subscriptions are capped ([`config::Limits`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal_core::{
    next_item, AppendRequest, AppendResult, Error, EventStore, ReadRequest, RecordedEvent,
    SubscribeRequest, SubscriptionItem,
};
use annal_engine::Store;
use tokio::sync::{mpsc, watch, Semaphore};

pub mod config;
mod grpc;
pub mod http;
pub mod json;
mod metrics;
mod serve;

pub use config::{Config, Limits, Settings};

/// What every request handler shares.
pub(crate) struct State {
    pub store: Arc<Store>,
    pub config: Config,
    pub subscriptions: Arc<Semaphore>,
    pub append_budget: Arc<Semaphore>,
    /// Becomes true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub draining: AtomicBool,
    pub started: Instant,
}

/// One message of a read, before it is put on the wire.
pub(crate) enum ReadMsg {
    Events(Vec<RecordedEvent>),
    Failed(Error),
    End,
}

/// One message of a subscription, before it is put on the wire.
pub(crate) enum SubMsg {
    Events(Vec<RecordedEvent>),
    CaughtUp(Option<u64>),
    Checkpoint(u64),
    Heartbeat(Option<u64>),
    Failed(Error),
}

/// Replaces failures whose details are the server's business (I/O, internal errors) with a
/// plain internal error, after logging the original with a reference the operator can find.
pub(crate) fn public(e: Error) -> Error {
    match e {
        Error::Io { .. } | Error::Internal(_) => {
            let reference = uuid::Uuid::new_v4().simple().to_string();
            let reference = &reference[..12];
            tracing::error!(error = %e, reference, "request failed");
            Error::Internal(format!(
                "the server failed to complete the request; its log has the details under reference {reference}"
            ))
        }
        other => other,
    }
}

impl State {
    /// Appends, holding `wire_size` bytes of the in-flight budget while the append runs.
    pub async fn append(
        &self,
        request: AppendRequest,
        wire_size: usize,
    ) -> Result<AppendResult, Error> {
        let limit = self.config.limits.max_append_bytes;
        if wire_size > limit.saturating_mul(2) {
            return Err(Error::TooLarge {
                what: "append request".into(),
                size: wire_size,
                limit,
            });
        }
        let permits =
            u32::try_from(wire_size.clamp(1, self.config.limits.max_inflight_append_bytes))
                .unwrap_or(u32::MAX);
        let _budget = self
            .append_budget
            .acquire_many(permits)
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        let events = request.event_count();
        let bytes: usize = request
            .streams
            .iter()
            .flat_map(|s| s.events.iter())
            .map(|e| e.data.len())
            .sum();
        let started = Instant::now();
        let result = self.store.append(request).await;
        metrics::appended(&result, events, bytes, started.elapsed());
        result.map_err(public)
    }

    /// Starts a read: validates it now, then streams batches of at most `read_batch_events`
    /// events from a blocking thread through a queue of `queue` items. `convert` turns each
    /// [`ReadMsg`] into what goes on the queue (nothing, for `None`) on that thread.
    pub fn read_batches<T, F>(
        &self,
        request: ReadRequest,
        queue: usize,
        mut convert: F,
    ) -> Result<mpsc::Receiver<T>, Error>
    where
        T: Send + 'static,
        F: FnMut(ReadMsg) -> Option<T> + Send + 'static,
    {
        let mut events = self.store.read_iter(request).map_err(public)?;
        let batch = self.config.limits.read_batch_events;
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::task::spawn_blocking(move || {
            // False when the reader went away.
            let mut send = |msg| match convert(msg) {
                Some(item) => tx.blocking_send(item).is_ok(),
                None => true,
            };
            let mut buf = Vec::with_capacity(batch);
            loop {
                match events.next() {
                    Some(Ok(e)) => {
                        buf.push(e);
                        if buf.len() == batch {
                            let full = std::mem::replace(&mut buf, Vec::with_capacity(batch));
                            if !send(ReadMsg::Events(full)) {
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        if !buf.is_empty() && !send(ReadMsg::Events(std::mem::take(&mut buf))) {
                            return;
                        }
                        send(ReadMsg::Failed(public(e)));
                        return;
                    }
                    None => {
                        if !buf.is_empty() && !send(ReadMsg::Events(buf)) {
                            return;
                        }
                        send(ReadMsg::End);
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Starts a subscription: history, the caught-up marker, live events, checkpoints and
    /// heartbeats, as [`SubMsg`]s turned into `T` by `convert`, through a queue of
    /// `subscription_buffer` messages. It ends when the receiver goes away or the server
    /// shuts down (with a last `Failed(Unavailable)`).
    pub async fn subscribe<T, F>(
        self: &Arc<Self>,
        request: SubscribeRequest,
        heartbeat: Option<Duration>,
        mut convert: F,
    ) -> Result<mpsc::Receiver<T>, Error>
    where
        T: Send + 'static,
        F: FnMut(SubMsg) -> T + Send + 'static,
    {
        let permit = self
            .subscriptions
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Error::Unavailable(format!(
                    "the server already serves {} subscriptions, its limit (max_subscriptions)",
                    self.config.limits.max_subscriptions
                ))
            })?;
        let mut sub = self.store.subscribe(request).await.map_err(public)?;
        let batch = self.config.limits.read_batch_events;
        let heartbeat = heartbeat
            .unwrap_or(self.config.limits.heartbeat)
            .max(Duration::from_millis(10));
        let (tx, rx) = mpsc::channel(self.config.limits.subscription_buffer);
        let state = Arc::clone(self);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _active = metrics::ActiveSubscription::new();
            let mut next_beat = tokio::time::Instant::now() + heartbeat;
            // An item read while gathering a batch, to send after it.
            let mut held: Option<SubscriptionItem> = None;
            loop {
                let item = match held.take() {
                    Some(item) => Some(Ok(item)),
                    None => tokio::select! {
                        biased;
                        () = stopping(&mut shutdown) => {
                            let _ = tx
                                .send(convert(SubMsg::Failed(Error::Unavailable(
                                    "the server is shutting down".into(),
                                ))))
                                .await;
                            return;
                        }
                        () = tx.closed() => return,
                        item = next_item(&mut sub) => item,
                        () = tokio::time::sleep_until(next_beat) => {
                            let head = state.store.head().await.ok().flatten();
                            if tx.send(convert(SubMsg::Heartbeat(head))).await.is_err() {
                                return;
                            }
                            next_beat = tokio::time::Instant::now() + heartbeat;
                            continue;
                        }
                    },
                };
                let msg = match item {
                    None => return,
                    Some(Err(e)) => {
                        let _ = tx.send(convert(SubMsg::Failed(public(e)))).await;
                        return;
                    }
                    Some(Ok(SubscriptionItem::Event(e))) => {
                        let mut events = vec![e];
                        // Gather whatever else is ready, up to a batch.
                        while events.len() < batch {
                            match ready_item(&mut sub).await {
                                Some(Some(Ok(SubscriptionItem::Event(e)))) => events.push(e),
                                Some(Some(other)) => {
                                    held = Some(match other {
                                        Ok(item) => item,
                                        Err(e) => {
                                            let _ = tx.send(convert(SubMsg::Events(events))).await;
                                            let _ =
                                                tx.send(convert(SubMsg::Failed(public(e)))).await;
                                            return;
                                        }
                                    });
                                    break;
                                }
                                Some(None) => break,
                                None => break,
                            }
                        }
                        if let (Some(last), Ok(Some(head))) =
                            (events.last(), state.store.head().await)
                        {
                            metrics::lag(head.saturating_sub(last.position));
                        }
                        SubMsg::Events(events)
                    }
                    Some(Ok(SubscriptionItem::CaughtUp { position })) => SubMsg::CaughtUp(position),
                    Some(Ok(SubscriptionItem::Checkpoint { position })) => {
                        // Only the newest of the checkpoints that are ready matters.
                        let mut position = position;
                        loop {
                            match ready_item(&mut sub).await {
                                Some(Some(Ok(SubscriptionItem::Checkpoint { position: p }))) => {
                                    position = p
                                }
                                Some(Some(other)) => {
                                    held = Some(match other {
                                        Ok(item) => item,
                                        Err(e) => {
                                            let _ =
                                                tx.send(convert(SubMsg::Failed(public(e)))).await;
                                            return;
                                        }
                                    });
                                    break;
                                }
                                _ => break,
                            }
                        }
                        SubMsg::Checkpoint(position)
                    }
                };
                if tx.send(convert(msg)).await.is_err() {
                    return;
                }
                next_beat = tokio::time::Instant::now() + heartbeat;
            }
        });
        Ok(rx)
    }

    /// True when the server should take requests: the store is writable and no shutdown
    /// has begun.
    pub fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("the server is shutting down".into());
        }
        if let Some(cause) = self.store.poison_cause() {
            return Err(format!("the store refuses writes: {cause}"));
        }
        Ok(())
    }
}

/// Returns once the server has begun shutting down.
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await;
}

/// The next item if one is ready now; `None` when the subscription would wait.
async fn ready_item(
    sub: &mut annal_core::SubscriptionStream,
) -> Option<Option<annal_core::Result<SubscriptionItem>>> {
    std::future::poll_fn(|cx| match sub.as_mut().poll_next(cx) {
        std::task::Poll::Ready(item) => std::task::Poll::Ready(Some(item)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Opens the store, binds the listen address and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        use anyhow::Context;
        let tls = match &config.tls {
            Some(files) => Some(serve::tls_acceptor(files)?),
            None => None,
        };
        let engine = annal_engine::Config::default()
            .max_event_size(config.limits.max_event_bytes)
            .max_append_size(config.limits.max_append_bytes);
        let data = config.data.clone();
        let store = tokio::task::spawn_blocking(move || Store::open_with(&data, engine))
            .await?
            .with_context(|| format!("opening the store in {}", config.data.display()))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        metrics::install();
        let (stop, shutdown) = watch::channel(false);
        let state = Arc::new(State {
            store: Arc::new(store),
            subscriptions: Arc::new(Semaphore::new(config.limits.max_subscriptions)),
            append_budget: Arc::new(Semaphore::new(config.limits.max_inflight_append_bytes)),
            config,
            shutdown: shutdown.clone(),
            draining: AtomicBool::new(false),
            started: Instant::now(),
        });
        let app = http::router(Arc::clone(&state));
        let done = tokio::spawn(serve::serve(
            listener,
            tls,
            app,
            Arc::clone(&state),
            shutdown,
        ));
        tracing::info!(%addr, data = %state.config.data.display(), tls = state.config.tls.is_some(), auth = state.config.auth_enabled(), "annal is serving");
        Ok(Server {
            addr,
            state,
            stop,
            done,
        })
    }

    /// The address the server listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The store being served.
    pub fn store(&self) -> &Arc<Store> {
        &self.state.store
    }

    /// Stops accepting, waits for requests in flight (up to `shutdown_grace`), ends
    /// subscriptions and closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.state.draining.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        self.finish().await
    }

    /// Waits until serving has stopped, then closes the store once nothing else holds it
    /// (closing writes a checkpoint, so the next start replays nothing).
    async fn finish(self) -> anyhow::Result<()> {
        let served = self.done.await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut state = self.state;
        loop {
            match Arc::try_unwrap(state) {
                Ok(s) => {
                    match Arc::try_unwrap(s.store) {
                        Ok(store) => tokio::task::spawn_blocking(move || store.close()).await??,
                        Err(_) => tracing::warn!("the store is still in use; it closes at exit"),
                    }
                    break;
                }
                Err(again) if Instant::now() < deadline => {
                    state = again;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    tracing::warn!("requests still hold the store; it closes at exit");
                    break;
                }
            }
        }
        served
    }
}
