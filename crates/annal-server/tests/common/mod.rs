//! Helpers for the server's tests: a server on a port the system picks, a gRPC client, and a
//! small HTTP/1.1 client (plain or TLS) that reads whole responses, chunked or not.

#![allow(dead_code)]

use std::sync::Arc;

use annal_client::Client;
use annal_server::{Config, Server};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

pub struct TestServer {
    pub server: Server,
    pub url: String,
    /// The store's folder.
    pub data: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
}

pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    edit(&mut config);
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let data = config.data.clone();
    let server = Server::start(config).await.unwrap();
    let url = format!("{scheme}://{}", server.local_addr());
    TestServer {
        server,
        url,
        data,
        _dir: dir,
    }
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

impl TestServer {
    pub async fn client(&self) -> Client {
        Client::connect(self.url.clone()).await.unwrap()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// A gRPC client of the server at `addr`.
    pub async fn client_for(addr: std::net::SocketAddr) -> Client {
        Client::connect(format!("http://{addr}")).await.unwrap()
    }
}

/// A metric's value as `/metrics` shows it now: `name` with its labels, as in
/// `annal_requests_total{api="wire",status="2xx"}`; 0 when it is not shown.
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let m = http(addr, "GET", "/metrics", &[], "").await.text();
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A response: status, headers and the whole body.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    send(hyper_util_io(stream), method, path, headers, body).await
}

/// One HTTP/1.1 request over TLS, trusting `ca_pem`.
pub async fn https(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    send(hyper_util_io(tls), method, path, headers, body).await
}

fn hyper_util_io<T>(io: T) -> Io<T> {
    Io(io)
}

async fn send<T>(io: Io<T>, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// Tokio I/O for hyper's traits.
pub struct Io<T>(pub T);

impl<T: tokio::io::AsyncRead + Unpin> hyper::rt::Read for Io<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut tmp = vec![0u8; buf.remaining().min(64 * 1024)];
        let mut rb = tokio::io::ReadBuf::new(&mut tmp);
        std::task::ready!(tokio::io::AsyncRead::poll_read(
            std::pin::Pin::new(&mut self.0),
            cx,
            &mut rb
        ))?;
        buf.put_slice(rb.filled());
        std::task::Poll::Ready(Ok(()))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> hyper::rt::Write for Io<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.0), cx)
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
pub struct Cert {
    pub cert_pem: String,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
}

impl Cert {
    /// The certificate and key as the server's configuration names them.
    pub fn files(&self) -> annal_server::config::TlsFiles {
        annal_server::config::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

pub fn self_signed() -> Cert {
    self_signed_as(false)
}

/// A self-signed certificate that marks itself a CA, as `openssl req -x509` makes one.
pub fn self_signed_ca() -> Cert {
    self_signed_as(true)
}

fn self_signed_as(ca: bool) -> Cert {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Cert {
        cert_pem: cert.pem(),
        cert: cert_path,
        key: key_path,
        _dir: dir,
    }
}

/// A Server-Sent Events response read raw from its connection, as it arrives.
pub struct Sse {
    tcp: tokio::net::TcpStream,
    got: Vec<u8>,
    /// How much of `got` earlier waits have passed.
    seen: usize,
}

impl Sse {
    pub async fn open(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        Sse {
            tcp,
            got: Vec::new(),
            seen: 0,
        }
    }

    /// Reads until `until` has arrived after what earlier waits passed, and the SSE event
    /// holding it has ended; returns everything read so far.
    pub async fn until(&mut self, until: &str) -> String {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let seen = self.seen;
        let found = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let text = String::from_utf8_lossy(&self.got[seen..]).into_owned();
                if let Some(at) = text.find(until) {
                    // Wait for the end of that SSE event.
                    if let Some(end) = text[at..].find("\n\n") {
                        return seen + at + end;
                    }
                }
                let n = self.tcp.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "the stream ended: {}",
                    String::from_utf8_lossy(&self.got)
                );
                self.got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "'{until}' did not arrive: {}",
                String::from_utf8_lossy(&self.got)
            )
        });
        self.seen = found;
        let text = String::from_utf8_lossy(&self.got).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("text/event-stream"), "{text}");
        text
    }
}
