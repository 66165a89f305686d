//! Appends over Annal's framed protocol (`annal_wire`, docs/wire-protocol.md): one
//! plain TCP connection per [`Client`](crate::Client), opened on the first append, shared by
//! every clone, with as many appends in flight as the callers make.
//!
//! A frame is written by the caller itself through a [`FrameWriter`], in one non-blocking
//! write; what the socket does not take at once is queued whole and sent by a flusher task,
//! so a caller dropped at any point never leaves half a frame behind. A reader task hands
//! each answer to its caller by request id. When the connection fails, every caller still waiting gets
//! [`Error::Unavailable`] (as over gRPC, the append may or may not have been written; a retry
//! with the same event ids is answered with the original result), and the next append opens
//! a new connection. An append whose connection ends before its answer is sent again once,
//! on a new connection, as such a retry: a server closes connections it finds idle.
//!
//! A server whose answer to the Hello is not the protocol's (a proxy that speaks only HTTP,
//! an older server) is remembered, and this client's appends go over gRPC instead; after no
//! answer at all (a timeout, a closed connection) they go over gRPC for a minute, and then
//! the protocol is tried again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annal_core::{Error, Result};
use annal_proto as pb;
use annal_wire::{self as wire, FrameWriter, Header, Kind, HEADER_LEN};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

/// Larger than any answer: an AppendResponse has a few numbers per stream of its request,
/// and a request is at most the server's `max_append_bytes`.
const MAX_ANSWER: usize = 64 << 20;

/// After a Hello that got no answer (a timeout, or the connection closed), how long appends
/// go over gRPC before the framed protocol is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Where and how to open the framed connection.
pub(crate) struct Framed {
    /// `host:port`.
    addr: String,
    url: String,
    token: Vec<u8>,
    timeout: Duration,
    current: Mutex<Option<Arc<Conn>>>,
    /// Held while a connection is being opened, so that callers open one, not one each.
    opening: tokio::sync::Mutex<()>,
    /// Whatever answered the Hello is not an Annal server that speaks the protocol.
    unsupported: AtomicBool,
    /// The Hello got no answer at this time: gRPC until [`RETRY_AFTER`] has passed.
    unanswered: Mutex<Option<std::time::Instant>>,
}

/// What a Hello got.
enum Opened {
    Conn(Arc<Conn>),
    /// An answer that is not the protocol's.
    NotAnnal,
    /// No answer: a timeout or a closed connection.
    Silence,
}

/// An answer: its kind and payload.
type Answer = Result<(Kind, Vec<u8>)>;

struct Conn {
    writer: FrameWriter,
    /// Tells the reader to stop: the connection closed from this side.
    stop: Notify,
    waiting: Mutex<Waiting>,
    next_id: AtomicU32,
}

#[derive(Default)]
struct Waiting {
    /// Why the connection is over, once it is.
    closed: Option<Error>,
    callers: HashMap<u32, oneshot::Sender<Answer>>,
}

impl Framed {
    /// For an `http://` URL; `None` for anything else (TLS connections use gRPC).
    pub fn new(url: &str, token: Option<&str>, timeout: Duration) -> Option<Framed> {
        let uri: tonic::codegen::http::Uri = url.parse().ok()?;
        if uri.scheme_str() != Some("http") {
            return None;
        }
        let (_, addr) = crate::socket_addr(&uri, 80)?;
        Some(Framed {
            addr,
            url: url.to_string(),
            token: token.unwrap_or_default().as_bytes().to_vec(),
            timeout,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            unsupported: AtomicBool::new(false),
            unanswered: Mutex::new(None),
        })
    }

    /// Appends; `Ok(None)` when the server does not speak the framed protocol (the caller
    /// uses gRPC).
    pub async fn append(
        &self,
        request: &annal_core::AppendRequest,
    ) -> Result<Option<pb::AppendResponse>> {
        let Some(conn) = self.conn().await? else {
            return Ok(None);
        };
        let answer = match conn
            .call(|out, id| wire::put_append(out, id, request))
            .await
        {
            // The connection ended first (a server closes one it finds idle, or to make
            // room): sent again once, on a new connection. Events keep their ids, so an
            // append the server did write is answered with its first result.
            Err(Error::Unavailable(_)) if !conn.is_open() => {
                let Some(conn) = self.conn().await? else {
                    return Ok(None);
                };
                conn.call(|out, id| wire::put_append(out, id, request))
                    .await
            }
            other => other,
        };
        let (kind, payload) = answer?;
        match kind {
            Kind::Appended => pb::AppendResponse::decode(payload.as_slice())
                .map(Some)
                .map_err(|e| {
                    Error::Internal(format!(
                        "the server's Appended frame is not an annal.v1.AppendResponse: {e}"
                    ))
                }),
            _ => Err(status_error(&payload)),
        }
    }

    /// The open connection, opening one if there is none.
    async fn conn(&self) -> Result<Option<Arc<Conn>>> {
        if let Some(c) = self.open_conn() {
            return Ok(Some(c));
        }
        if self.use_grpc() {
            return Ok(None);
        }
        let _opening = self.opening.lock().await;
        if let Some(c) = self.open_conn() {
            return Ok(Some(c));
        }
        if self.use_grpc() {
            return Ok(None);
        }
        match self.open().await? {
            Opened::Conn(c) => {
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&c));
                Ok(Some(c))
            }
            Opened::NotAnnal => {
                self.unsupported.store(true, Ordering::Relaxed);
                Ok(None)
            }
            Opened::Silence => {
                *self.unanswered.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(std::time::Instant::now());
                Ok(None)
            }
        }
    }

    /// True while appends should go over gRPC instead.
    fn use_grpc(&self) -> bool {
        self.unsupported.load(Ordering::Relaxed)
            || self
                .unanswered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| at.elapsed() < RETRY_AFTER)
    }

    fn open_conn(&self) -> Option<Arc<Conn>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|c| c.is_open()).cloned()
    }

    /// Connects and says Hello.
    async fn open(&self) -> Result<Opened> {
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::Unavailable(format!("cannot connect to {}: {e}", self.url))
        };
        let socket = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| unreachable(&"timed out"))?
            .map_err(|e| unreachable(&e))?;
        let _ = socket.set_nodelay(true);
        let (read, mut write) = socket.into_split();
        let mut hello = wire::PREFACE.to_vec();
        wire::put_frame(&mut hello, Kind::Hello, 0, &self.token);
        write.write_all(&hello).await.map_err(|e| unreachable(&e))?;
        let mut read = BufReader::with_capacity(16 << 10, read);
        let answer = tokio::time::timeout(self.timeout, async {
            let mut h = [0u8; HEADER_LEN];
            read.read_exact(&mut h).await.ok()?;
            let h = Header::parse(&h);
            let kind = Kind::from_u8(h.kind).filter(|k| matches!(k, Kind::Ready | Kind::Error));
            let Some(kind) = kind.filter(|_| h.len as usize <= 1 << 20) else {
                return Some(None);
            };
            let mut payload = vec![0u8; h.len as usize];
            read.read_exact(&mut payload).await.ok()?;
            Some(Some((kind, payload)))
        })
        .await;
        match answer {
            Ok(Some(Some((Kind::Ready, p)))) if p == wire::PREFACE => {}
            Ok(Some(Some((Kind::Error, p)))) => return Err(status_error(&p)),
            Ok(Some(_)) => return Ok(Opened::NotAnnal),
            Ok(None) | Err(_) => return Ok(Opened::Silence),
        }
        let conn = Arc::new(Conn {
            writer: FrameWriter::new(write),
            stop: Notify::new(),
            waiting: Mutex::new(Waiting::default()),
            next_id: AtomicU32::new(1),
        });
        tokio::spawn(read_answers(read, Arc::clone(&conn)));
        tokio::spawn({
            let conn = Arc::clone(&conn);
            async move {
                if let Err(e) = conn.writer.run().await {
                    conn.close(write_failed(&e));
                }
            }
        });
        Ok(Opened::Conn(conn))
    }
}

impl Drop for Framed {
    /// The last clone of the client is gone: the connection closes (its tasks end, and with
    /// them the socket).
    fn drop(&mut self) {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = current {
            c.close(Error::Closed);
        }
    }
}

fn write_failed(e: &std::io::Error) -> Error {
    Error::Unavailable(format!("writing to the server failed: {e}"))
}

fn status_error(payload: &[u8]) -> Error {
    match wire::decode_status(payload) {
        Some(status) => pb::error_from_status(&status),
        None => Error::Internal("the server sent an Error frame that holds no status".into()),
    }
}

impl Conn {
    fn is_open(&self) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed
            .is_none()
    }

    /// Ends the connection for every caller still waiting.
    fn close(&self, why: Error) {
        let callers = {
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.closed.get_or_insert(why.clone());
            std::mem::take(&mut w.callers)
        };
        for (_, caller) in callers {
            let _ = caller.send(Err(why.clone()));
        }
        // Nobody waits for what is still queued: every caller has its answer now.
        self.writer.abandon();
        self.stop.notify_one();
    }

    /// Sends the frame `frame` writes for a fresh request id and waits for its answer.
    async fn call(&self, frame: impl FnOnce(&mut Vec<u8>, u32)) -> Answer {
        let id = match self.next_id.fetch_add(1, Ordering::Relaxed) {
            // Id 0 is the connection's own.
            0 => self.next_id.fetch_add(1, Ordering::Relaxed),
            id => id,
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = &w.closed {
                return Err(e.clone());
            }
            w.callers.insert(id, tx);
        }
        let mut bytes = Vec::new();
        frame(&mut bytes, id);
        if let Err(e) = self.writer.send(&bytes) {
            self.close(write_failed(&e));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::Unavailable(
                "the connection to the server closed before it answered".into(),
            ))
        })
    }
}

/// Hands each answer to its caller until the connection ends.
async fn read_answers(mut read: BufReader<OwnedReadHalf>, conn: Arc<Conn>) {
    let why = loop {
        let mut h = [0u8; HEADER_LEN];
        let got = tokio::select! {
            got = read.read_exact(&mut h) => got,
            () = conn.stop.notified() => return,
        };
        if let Err(e) = got {
            break Error::Unavailable(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "the server closed the connection".to_string()
            } else {
                format!("reading from the server failed: {e}")
            });
        }
        let h = Header::parse(&h);
        let kind = match Kind::from_u8(h.kind) {
            Some(k @ (Kind::Appended | Kind::Error)) => k,
            _ => {
                break Error::Internal(format!(
                    "the server sent a frame of kind {} where an answer belongs",
                    h.kind
                ))
            }
        };
        if h.len as usize > MAX_ANSWER {
            break Error::Internal(format!(
                "the server sent an answer of {} bytes, more than any answer can be",
                h.len
            ));
        }
        let mut payload = vec![0u8; h.len as usize];
        if let Err(e) = read.read_exact(&mut payload).await {
            break Error::Unavailable(format!("the connection ended inside a frame: {e}"));
        }
        if h.id == 0 {
            // The server ends the connection, and says why.
            break status_error(&payload);
        }
        let caller = conn
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .callers
            .remove(&h.id);
        if let Some(caller) = caller {
            let _ = caller.send(Ok((kind, payload)));
        }
    };
    conn.close(why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    /// A listener that answers every connection with `reply` (once it has read something),
    /// or says nothing at all when `reply` is `None`.
    /// Also returns how many connections it has taken.
    async fn listener(reply: Option<&'static [u8]>) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&taken);
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                if let Some(r) = reply {
                    let _ = s.write_all(r).await;
                }
                held.push(s);
            }
        });
        (url, taken)
    }

    fn message() -> annal_core::AppendRequest {
        annal_core::AppendRequest::stream(
            "s",
            annal_core::ExpectedRevision::Any,
            vec![annal_core::NewEvent::new("A", b"{}".to_vec())],
        )
    }

    #[tokio::test]
    async fn a_server_that_does_not_speak_the_protocol_is_remembered() {
        for reply in [
            Some(&b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"[..]),
            None,
        ] {
            let (url, taken) = listener(reply).await;
            let framed = Framed::new(&url, None, Duration::from_millis(300)).unwrap();
            assert!(
                framed.append(&message()).await.unwrap().is_none(),
                "{reply:?}"
            );
            // An answer that is not Annal's is remembered for good; silence for a while,
            // since the server may only have been too busy to answer.
            assert_eq!(
                framed.unsupported.load(Ordering::Relaxed),
                reply.is_some(),
                "{reply:?}"
            );
            assert!(framed.use_grpc());
            // Known now: no second try (a try connects before it gives up, so the server
            // would have taken a second connection by the time the append returns).
            assert_eq!(taken.load(Ordering::SeqCst), 1);
            assert!(framed.append(&message()).await.unwrap().is_none());
            assert_eq!(taken.load(Ordering::SeqCst), 1, "{reply:?}");
            if reply.is_none() {
                *framed.unanswered.lock().unwrap() =
                    Some(std::time::Instant::now() - RETRY_AFTER - Duration::from_secs(1));
                assert!(!framed.use_grpc(), "tried again after a while");
            }
        }
    }

    #[tokio::test]
    async fn nothing_listening_is_unavailable_and_tls_urls_do_not_use_it() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let framed = Framed::new(&url, None, Duration::from_secs(1)).unwrap();
        let e = framed.append(&message()).await.unwrap_err();
        assert!(
            matches!(&e, Error::Unavailable(m) if m.contains("cannot connect")),
            "{e:?}"
        );
        assert!(
            !framed.unsupported.load(Ordering::Relaxed),
            "a later try may succeed"
        );
        assert!(Framed::new("https://127.0.0.1:2113", None, Duration::from_secs(1)).is_none());
        let v6 = Framed::new("http://[::1]:2113", None, Duration::from_secs(1)).unwrap();
        assert_eq!(v6.addr, "[::1]:2113");
        let default_port = Framed::new("http://localhost", None, Duration::from_secs(1)).unwrap();
        assert_eq!(default_port.addr, "localhost:80");
    }
}
