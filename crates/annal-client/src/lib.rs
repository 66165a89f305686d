//! Annal's Rust client: [`Client`] implements [`annal_core::EventStore`] over the network, so a
//! program moves from the embedded engine to a server by changing one constructor:
//!
//! ```no_run
//! # async fn demo() -> annal_core::Result<()> {
//! use annal_core::{AppendRequest, EventStore, ExpectedRevision, NewEvent};
//!
//! // let store = annal_engine::Store::open("./annal-data")?;
//! let store = annal_client::Client::connect("http://127.0.0.1:2113").await?;
//! store
//!     .append(AppendRequest::stream(
//!         "account-42",
//!         ExpectedRevision::NoStream,
//!         vec![NewEvent::new("AccountOpened", br#"{"owner":"ada"}"#.to_vec())],
//!     ))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Appends and reads go over Annal's framed protocol on the same port (plain TCP, many
//! requests in flight on one connection, none of HTTP/2's per-request framing) when the URL
//! is `http://`, a read a page at a time; everything else, and every request over
//! `https://`, goes over gRPC. See
//! [`ClientBuilder::framed`].
//!
//! Every error the server returns comes back as the same [`Error`] variant the engine would
//! have returned; a server that cannot be reached is [`Error::Unavailable`]. Reads and
//! subscriptions arrive in batches and are handed out one event at a time; heartbeats are
//! consumed here.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use annal_core::{
    AppendRequest, AppendResult, CategoryInfo, Error, EventStore, EventStream, ListCategories,
    ListStreams, NewSnapshot, ReadRequest, RecordedEvent, Result, Snapshot, StreamInfo,
    SubscribeRequest, SubscriptionItem, SubscriptionStream, Timestamp,
};
use annal_proto as pb;
use futures_core::Stream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

mod groups;
#[cfg(feature = "postgres")]
pub mod processed;
mod tls;
mod wire;

pub use groups::{Delivery, GroupArgs, GroupCall, Member};

/// Listings are fetched in pages of this many (the server's largest page).
const PAGE: usize = 10_000;

/// Bytes one request or subscription may have in flight before it is read.
const STREAM_WINDOW: u32 = 4 << 20;
/// Far above the sum of the streams' windows.
const CONNECTION_WINDOW: u32 = 1 << 30;
/// The largest HTTP/2 frame the server may send.
const MAX_FRAME: u32 = 1 << 20;

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    domain: Option<String>,
    connect_timeout: Duration,
    framed: bool,
}

impl ClientBuilder {
    /// A bearer token sent with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trust this PEM certificate (a CA or the server's own) for `https://` URLs; without
    /// it, the system's roots are used.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// The name the server's certificate must carry (default: the URL's host).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether appends and reads go over Annal's framed protocol (the default for `http://` URLs;
    /// `https://` always uses gRPC). Turn it off when only HTTP/2 reaches the server, such
    /// as behind a gRPC proxy; left on, the client falls back to gRPC by itself for a server
    /// whose answer to the protocol is not Annal's, and for a minute after one that did not
    /// answer at all.
    pub fn framed(mut self, on: bool) -> Self {
        self.framed = on;
        self
    }

    /// Connects, failing with [`Error::Unavailable`] when the server cannot be reached, and
    /// with [`Error::InvalidArgument`] for a URL that names no server.
    pub async fn connect(self) -> Result<Client> {
        check_url(&self.url)?;
        // With certificates of its own to trust, the client makes its TLS connections itself
        // (`tls.rs`) and tells the channel the URL is plain.
        let own_tls = self.url.starts_with("https://") && self.ca_pem.is_some();
        let channel_url = if own_tls {
            self.url.replacen("https://", "http://", 1)
        } else {
            self.url.clone()
        };
        let mut endpoint = Endpoint::from_shared(channel_url)
            .map_err(|e| Error::invalid("server url", format!("'{}': {e}", self.url)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // Each stream may buffer its own window; the connection's is large enough that
            // a subscription the program does not read never stalls the others.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            // Large batches arrive in few frames.
            .max_frame_size(MAX_FRAME)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if self.url.starts_with("https://") && !own_tls {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(d) = &self.domain {
                tls = tls.domain_name(d.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::invalid("tls", e.to_string()))?;
        }
        let unreachable = |e: &dyn std::error::Error| {
            let chain = pb::error_chain(e);
            Error::Unavailable(format!(
                "cannot connect to {}: {chain}{}",
                self.url,
                tls_hint(&self.url, &chain)
            ))
        };
        let channel = match (&self.ca_pem, own_tls) {
            (Some(pem), true) => {
                let (host, addr) = socket_addr(endpoint.uri(), 443)
                    .ok_or_else(|| Error::invalid("server url", "names no host"))?;
                let name = self.domain.clone().unwrap_or(host);
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| Error::invalid("domain", format!("'{name}' is no server name")))?;
                let connector = tls::Connector {
                    config: tls::config(pem)?,
                    name,
                    addr,
                };
                endpoint
                    .connect_with_connector(connector)
                    .await
                    .map_err(|e| unreachable(&e))?
            }
            _ => endpoint.connect().await.map_err(|e| unreachable(&e))?,
        };
        let token = match &self.token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| Error::invalid("token", "must be visible ASCII characters"))?,
            ),
        };
        let framed = self
            .framed
            .then(|| wire::Framed::new(&self.url, self.token.as_deref(), self.connect_timeout))
            .flatten()
            .map(Arc::new);
        Ok(Client {
            grpc: pb::event_store_client::EventStoreClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            token,
            framed,
        })
    }
}

/// What a server says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: String,
    pub head: Option<u64>,
    pub max_event_bytes: u64,
    pub max_append_bytes: u64,
    /// Why the store refuses writes, when it does.
    pub poisoned: Option<String>,
}

/// A connection to an Annal server. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct Client {
    grpc: pb::event_store_client::EventStoreClient<Channel>,
    token: Option<AsciiMetadataValue>,
    /// Appends and reads over the framed protocol, when the URL and the builder allow it.
    framed: Option<Arc<wire::Framed>>,
}

impl Client {
    /// Connects to `url` (`http://host:port` or `https://host:port`).
    pub async fn connect(url: impl Into<String>) -> Result<Client> {
        Self::builder(url).connect().await
    }

    /// A builder for tokens, TLS and timeouts.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            ca_pem: None,
            domain: None,
            connect_timeout: Duration::from_secs(5),
            framed: true,
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    /// The server's version, head and limits.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        let r = self
            .grpc
            .clone()
            .server_info(self.request(pb::ServerInfoRequest {}))
            .await
            .map_err(|s| pb::error_from_status(&s))?
            .into_inner();
        Ok(ServerInfo {
            version: r.version,
            head: r.head,
            max_event_bytes: r.max_event_bytes,
            max_append_bytes: r.max_append_bytes,
            poisoned: r.poisoned,
        })
    }

    /// Subscribes with a heartbeat interval of the caller's choosing.
    pub async fn subscribe_with_heartbeat(
        &self,
        request: SubscribeRequest,
        heartbeat: Duration,
    ) -> Result<SubscriptionStream> {
        let mut message = pb::SubscribeRequest::from_core(request);
        message.heartbeat_ms = u32::try_from(heartbeat.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        self.subscribe_message(message).await
    }

    async fn subscribe_message(&self, message: pb::SubscribeRequest) -> Result<SubscriptionStream> {
        let inner = self
            .grpc
            .clone()
            .subscribe(self.request(message))
            .await
            .map_err(|s| pb::error_from_status(&s))?
            .into_inner();
        Ok(Box::pin(Subscription {
            inner,
            buf: VecDeque::new(),
            done: false,
        }))
    }
}

impl EventStore for Client {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        if let Some(framed) = &self.framed {
            if let Some(r) = framed.append(&request).await? {
                return Ok(r.into());
            }
        }
        let message = pb::AppendRequest::from(request);
        let r = self
            .grpc
            .clone()
            .append(self.request(message))
            .await
            .map_err(|s| pb::error_from_status(&s))?;
        Ok(r.into_inner().into())
    }

    async fn read(&self, request: ReadRequest) -> Result<EventStream> {
        if let Some(framed) = &self.framed {
            if let Some(pages) = framed.read(request.clone()).await? {
                return Ok(EventStream::new(pages.head(), pages));
            }
        }
        let mut message = pb::ReadRequest::from(request);
        message.packed = true;
        let response = self
            .grpc
            .clone()
            .read(self.request(message))
            .await
            .map_err(|s| pb::error_from_status(&s))?;
        // The head the server read at; a server that does not say leaves it unknown.
        let head = response
            .metadata()
            .get(pb::HEAD_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(EventStream::new(
            head,
            Events {
                inner: response.into_inner(),
                buf: Vec::new().into_iter(),
                done: false,
            },
        ))
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<SubscriptionStream> {
        let mut message = pb::SubscribeRequest::from_core(request);
        message.packed = true;
        self.subscribe_message(message).await
    }

    async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        let r = self
            .grpc
            .clone()
            .get_stream(self.request(pb::GetStreamRequest {
                stream_id: stream_id.to_string(),
            }))
            .await
            .map_err(|s| pb::error_from_status(&s))?;
        Ok(r.into_inner().info.map(Into::into))
    }

    /// The server answers at most a page of 10,000; a larger request (or 0, everything) is
    /// fetched page by page.
    async fn list_streams(&self, request: ListStreams) -> Result<Vec<StreamInfo>> {
        let prefix = request.prefix;
        paged(
            request.limit,
            request.after,
            |after, limit| {
                let message = pb::ListStreamsRequest {
                    prefix: prefix.clone(),
                    after,
                    limit: limit as u64,
                };
                async move {
                    let r = self
                        .grpc
                        .clone()
                        .list_streams(self.request(message))
                        .await
                        .map_err(|s| pb::error_from_status(&s))?;
                    Ok(r.into_inner().streams.into_iter().map(Into::into).collect())
                }
            },
            |s: &StreamInfo| s.stream_id.clone(),
        )
        .await
    }

    async fn list_categories(&self, request: ListCategories) -> Result<Vec<CategoryInfo>> {
        paged(
            request.limit,
            request.after,
            |after, limit| {
                let message = pb::ListCategoriesRequest {
                    after,
                    limit: limit as u64,
                };
                async move {
                    let r = self
                        .grpc
                        .clone()
                        .list_categories(self.request(message))
                        .await
                        .map_err(|s| pb::error_from_status(&s))?;
                    Ok(r.into_inner()
                        .categories
                        .into_iter()
                        .map(Into::into)
                        .collect())
                }
            },
            |c: &CategoryInfo| c.category.clone(),
        )
        .await
    }

    async fn position_at(&self, at: Timestamp) -> Result<Option<u64>> {
        let r = self
            .grpc
            .clone()
            .position_at(self.request(pb::PositionAtRequest {
                at_us: at.as_micros(),
            }))
            .await
            .map_err(|s| pb::error_from_status(&s))?;
        Ok(r.into_inner().position)
    }

    async fn head(&self) -> Result<Option<u64>> {
        Ok(self.server_info().await?.head)
    }

    async fn put_snapshot(&self, snapshot: NewSnapshot) -> Result<()> {
        self.grpc
            .clone()
            .put_snapshot(self.request(pb::PutSnapshotRequest::from(snapshot)))
            .await
            .map_err(|s| pb::error_from_status(&s))?;
        Ok(())
    }

    async fn get_snapshot(
        &self,
        stream_id: &str,
        at_or_before: Option<u64>,
    ) -> Result<Option<Snapshot>> {
        let r = self
            .grpc
            .clone()
            .get_snapshot(self.request(pb::GetSnapshotRequest {
                stream_id: stream_id.to_string(),
                at_or_before,
            }))
            .await
            .map_err(|s| pb::error_from_status(&s))?;
        Ok(r.into_inner().snapshot.map(Into::into))
    }

    async fn delete_snapshots(&self, stream_id: &str) -> Result<u64> {
        let r = self
            .grpc
            .clone()
            .delete_snapshots(self.request(pb::DeleteSnapshotsRequest {
                stream_id: stream_id.to_string(),
            }))
            .await
            .map_err(|s| pb::error_from_status(&s))?;
        Ok(r.into_inner().deleted)
    }
}

/// Fetches `limit` entries of a listing (0: all of them) in pages of at most [`PAGE`], each
/// page starting after the last entry of the one before (`key`).
async fn paged<T, F, Fut>(
    limit: usize,
    mut after: Option<String>,
    mut fetch: F,
    key: impl Fn(&T) -> String,
) -> Result<Vec<T>>
where
    F: FnMut(Option<String>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let want = if limit == 0 { usize::MAX } else { limit };
    let mut out: Vec<T> = Vec::new();
    loop {
        let page = (want - out.len()).min(PAGE);
        let got = fetch(after.take(), page).await?;
        let short = got.len() < page;
        out.extend(got);
        if short || out.len() >= want {
            return Ok(out);
        }
        after = out.last().map(&key);
    }
}

/// A read's events, batch by batch from the server.
struct Events {
    inner: tonic::Streaming<pb::ReadResponse>,
    buf: std::vec::IntoIter<RecordedEvent>,
    done: bool,
}

impl Stream for Events {
    type Item = Result<RecordedEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(e) = self.buf.next() {
                return Poll::Ready(Some(Ok(e)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(batch)) => match batch.into_events() {
                    Ok(events) => self.buf = events.into_iter(),
                    Err(e) => {
                        self.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Some(Err(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(pb::error_from_status(&status))));
                }
                None => {
                    self.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// A subscription's items; heartbeats are dropped here.
struct Subscription {
    inner: tonic::Streaming<pb::SubscribeResponse>,
    buf: VecDeque<RecordedEvent>,
    done: bool,
}

impl Stream for Subscription {
    type Item = Result<SubscriptionItem>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use pb::subscribe_response::Item;
        loop {
            if let Some(e) = self.buf.pop_front() {
                return Poll::Ready(Some(Ok(SubscriptionItem::Event(e))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let message = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(m)) => m,
                Some(Err(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(pb::error_from_status(&status))));
                }
                None => {
                    self.done = true;
                    return Poll::Ready(None);
                }
            };
            match message.item {
                Some(Item::Events(batch)) => match batch.into_events() {
                    Ok(events) => self.buf.extend(events),
                    Err(e) => {
                        self.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Some(Item::CaughtUp(c)) => {
                    return Poll::Ready(Some(Ok(SubscriptionItem::CaughtUp {
                        position: c.position,
                    })))
                }
                Some(Item::Checkpoint(c)) => {
                    return Poll::Ready(Some(Ok(SubscriptionItem::Checkpoint {
                        position: c.position,
                    })))
                }
                Some(Item::Heartbeat(_)) | None => {}
            }
        }
    }
}

/// Refuses a server URL that cannot name a server: no `http://` or `https://`, no host, or a
/// port that is not a number from 1 to 65535.
fn check_url(url: &str) -> Result<()> {
    let bad = |problem: String| Err(Error::invalid("server url", format!("'{url}' {problem}")));
    let uri: tonic::codegen::http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return bad(format!("is not a URL: {e}")),
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return bad(format!(
                "has the scheme '{other}'; the server speaks http:// (or https:// with TLS)"
            ))
        }
        None => {
            return bad(format!(
                "has no scheme; write http://{url} (or https://{url} with TLS)"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return bad("names no host".into());
    }
    // The text after the host (after `]` for an IPv6 one), since a port that is no u16 is
    // not given back as a port at all.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let after_host = authority.rsplit(']').next().unwrap_or(authority);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return bad(format!(
                "has the port '{port}'; a port is a number from 1 to 65535"
            ));
        }
    }
    Ok(())
}

/// What to do about a failed connection that TLS explains.
fn tls_hint(url: &str, chain: &str) -> &'static str {
    let https = url.starts_with("https://");
    if https && (chain.contains("UnknownIssuer") || chain.contains("invalid peer certificate")) {
        " (the server's certificate is not signed by a certificate this client trusts: give the CA that signed it, or the server's own certificate, with --ca FILE)"
    } else if https && chain.contains("NotValidForName") {
        " (the server's certificate does not name this host: connect by a name it carries)"
    } else if https && (chain.contains("InvalidContentType") || chain.contains("corrupt message")) {
        " (the server did not answer with TLS: if it serves without TLS, use http://)"
    } else if !https
        && (chain.contains("frame with invalid size")
            || chain.contains("connection reset")
            || chain.contains("broken pipe"))
    {
        " (if the server serves TLS, use https://)"
    } else {
        ""
    }
}

/// The host of `uri` (without an IPv6 address's brackets) and the address to connect to,
/// with `default_port` when the URI names none.
pub(crate) fn socket_addr(
    uri: &tonic::codegen::http::Uri,
    default_port: u16,
) -> Option<(String, String)> {
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(default_port);
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some((host.to_string(), addr))
}
