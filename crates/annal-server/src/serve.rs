//! The accept loop: one port for HTTP/1.1, HTTP/2 (gRPC needs HTTP/2) and, on plain TCP, the
//! framed append protocol; optionally behind TLS; with a cap on connections and on requests
//! in flight per connection, and a graceful shutdown that waits for requests in flight.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::conns::{Busy, Conn, Conns};
use crate::{stopping, State};

/// A TLS acceptor from PEM files, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading certificates from {}", files.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        let text = std::fs::read_to_string(&files.key).unwrap_or_default();
        if text.contains("ENCRYPTED") {
            anyhow::anyhow!(
                "{} holds an encrypted private key, which the server cannot use: give it the key decrypted (openssl pkey -in {0} -out plain-key.pem)",
                files.key.display()
            )
        } else {
            anyhow::anyhow!(
                "reading the private key from {}: {e} (a PEM private key is expected)",
                files.key.display()
            )
        }
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a usable TLS configuration")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connection whose writes fail once its client has taken nothing for `limit`: a client
/// that stops reading its answers loses its connection instead of holding it, and what its
/// requests hold, for ever.
struct Stalling<S> {
    io: S,
    limit: Duration,
    /// Since when writes have been waiting, as the time they may wait until.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Stalling<S> {
    fn new(io: S, limit: Duration) -> Stalling<S> {
        Stalling {
            io,
            limit,
            waiting: None,
        }
    }

    /// What a write that returned `polled` comes to, counting how long writes have waited.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let limit = self.limit;
        let until = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match until.as_mut().poll(cx) {
            Poll::Ready(()) => {
                crate::metrics::stalled_connection();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the client took nothing for {} (write_timeout)",
                        humantime::format_duration(limit)
                    ),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalling<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalling<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
struct Tracked {
    inner: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves HTTP on one connection until it ends, is closed for idleness or to make room, or
/// the server shuts down; the last two close it gracefully (requests in flight finish).
async fn serve_http<I>(
    io: I,
    builder: Builder<TokioExecutor>,
    app: Router,
    conn: Arc<Conn>,
    limits: &crate::config::Limits,
    unauthenticated_until: Instant,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let conn = Arc::clone(&conn);
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let busy = conn.begin();
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(Arc::clone(&conn));
            let mut app = app.clone();
            async move {
                let resp = match tower::Service::call(&mut app, req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
                Ok::<_, std::convert::Infallible>(resp.map(|inner| Tracked { inner, _busy: busy }))
            }
        })
    };
    let serving = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(serving);
    let idle = tokio::select! {
        result = serving.as_mut() => return result,
        () = conn.closed(limits.idle_timeout, unauthenticated_until) => true,
        () = stopping(&mut shutdown) => false,
    };
    if idle && conn.waits_on_client() {
        // Nothing the server does for it is lost: closed at once.
        return Ok(());
    }
    serving.as_mut().graceful_shutdown();
    if !idle {
        // Requests in flight finish, up to the shutdown grace.
        return serving.await;
    }
    // Nothing was in flight: a client that does not take part in a graceful close (an
    // HTTP/2 one that never answers) is not waited for long.
    match tokio::time::timeout(limits.handshake_timeout, serving).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// What one HTTP/2 request may have received and not yet read, and the largest frame.
const STREAM_WINDOW: u32 = 16 << 10;

/// Serves until `shutdown` turns true, then waits up to `shutdown_grace` for open requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let limits = state.config.limits.clone();
    let conns = Conns::new(limits.max_connections);
    let auth = state.config.auth_enabled();
    let mut builder = Builder::new(TokioExecutor::new());
    // What an HTTP/2 connection may buffer of request bodies before they are read is its
    // receive window (docs/ARCHITECTURE.md, "Bounds"). An append waiting for the budget
    // leaves what its client sent meanwhile unread, holding that much of the connection's
    // window; the connection's window is the streams' windows together, so that the append
    // that goes on reading (the overdraft) is never starved by those that wait. Small
    // frames keep small what an append holds before paying for it: one frame.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.ping_interval)
        .keep_alive_timeout(limits.ping_timeout)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(
            STREAM_WINDOW.saturating_mul(limits.max_streams_per_connection),
        )
        .max_frame_size(STREAM_WINDOW);
    // Every connection's task, so that those still open when the grace period ends can be
    // stopped before the store is closed.
    let mut tasks: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopping(&mut shutdown) => break,
        };
        // At the cap, the connection idle the longest makes room; when every one is busy,
        // the new client is closed at once rather than left waiting.
        let Some(place) = conns.admit(!auth) else {
            crate::metrics::connection_closed("full");
            tracing::debug!(%peer, "every connection is busy; a new one is refused");
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let unauthenticated_until = Instant::now() + limits.handshake_timeout;
        let app = app.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let state = Arc::clone(&state);
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let conn = Arc::clone(&place.conn);
            let _place = place;
            let result = match tls {
                None => {
                    // A connection that never says anything gives its place back; one that
                    // opens with the framed protocol's preface speaks it instead of HTTP.
                    let mut socket = socket;
                    let first = match tokio::time::timeout(
                        limits.handshake_timeout,
                        crate::wire::opens_with_preface(&mut socket),
                    )
                    .await
                    {
                        Ok(Some((false, first))) => first,
                        Ok(Some((true, _))) => {
                            crate::wire::serve_connection(socket, state, conn).await;
                            return;
                        }
                        _ => return,
                    };
                    drop(state);
                    let socket = crate::wire::Rewound::new(first, socket);
                    let socket = Stalling::new(socket, limits.write_timeout);
                    serve_http(
                        socket,
                        builder,
                        app,
                        conn,
                        &limits,
                        unauthenticated_until,
                        shutdown,
                    )
                    .await
                }
                Some(acceptor) => {
                    drop(state);
                    let stream = match tokio::time::timeout(
                        limits.handshake_timeout,
                        acceptor.accept(socket),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let stream = Stalling::new(stream, limits.write_timeout);
                    serve_http(
                        stream,
                        builder,
                        app,
                        conn,
                        &limits,
                        unauthenticated_until,
                        shutdown,
                    )
                    .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(state);
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    // Each connection closes gracefully on the shutdown signal: HTTP ones once their
    // requests are answered, framed ones once their appends in flight are.
    let drained = async { while tasks.join_next().await.is_some() {} };
    tokio::select! {
        () = drained => tracing::info!("every connection has closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "requests still open after the grace period; closing their connections");
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
