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
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
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
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading the private key from {}", files.key.display()))?;
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

/// Serves until `shutdown` turns true, then waits up to `shutdown_grace` for open requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let limits = state.config.limits.clone();
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    // Each request body may have its own window in flight; the connection's window is large
    // enough that one slow request never stalls the others on its connection. What a
    // connection buffers is bounded by streams x stream window.
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
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(1 << 30)
        .max_frame_size(1 << 20);
    // Every connection's task, so that those still open when the grace period ends can be
    // stopped before the store is closed.
    let mut tasks: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    loop {
        // At the connection limit, stop accepting: new clients wait in the kernel's queue.
        let permit = tokio::select! {
            p = Arc::clone(&connections).acquire_owned() => p?,
            () = stopping(&mut shutdown) => break,
        };
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
        let _ = socket.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = tls.clone();
        let state = Arc::clone(&state);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let _permit = permit;
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
                            crate::wire::serve_connection(socket, state).await;
                            return;
                        }
                        _ => return,
                    };
                    drop(state);
                    let socket = crate::wire::Rewound::new(first, socket);
                    let socket = Stalling::new(socket, limits.write_timeout);
                    let conn = builder.serve_connection(TokioIo::new(socket), service);
                    watcher.watch(conn.into_owned()).await
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
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
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
    // HTTP connections close through `graceful`; framed ones stop reading by themselves and
    // end once their appends in flight are answered.
    let drained = async {
        graceful.shutdown().await;
        while tasks.join_next().await.is_some() {}
    };
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
