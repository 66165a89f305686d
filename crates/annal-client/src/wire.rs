//! Appends and reads over Annal's framed protocol (`annal_wire`, docs/wire-protocol.md): one
//! plain TCP connection per [`Client`](crate::Client), opened on the first request, shared
//! by every clone, with as many requests in flight as the callers make. A read comes a page
//! at a time ([`Pages`]): the first with the read's answer, the next ones asked for as the
//! caller reaches the end of the one before.
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
//! an older server) is remembered, and this client's requests go over gRPC instead; after no
//! answer at all (a timeout, a closed connection) they go over gRPC for a minute, and then
//! the protocol is tried again. A server that takes framed appends but refuses a Read frame
//! (a server older than framed reads) is remembered too: reads then go over gRPC.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use annal_core::{Bytes, Direction, Error, ReadRequest, RecordedEvent, Result, Source};
use annal_proto as pb;
use annal_wire::{self as wire, FrameWriter, Header, Kind, HEADER_LEN};
use futures_core::Stream;
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
    /// The server refused a Read frame as a kind it does not know: reads go over gRPC.
    no_reads: AtomicBool,
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
            no_reads: AtomicBool::new(false),
        })
    }

    /// Appends; `Ok(None)` when the server does not speak the framed protocol (the caller
    /// uses gRPC).
    pub async fn append(
        &self,
        request: &annal_core::AppendRequest,
    ) -> Result<Option<pb::AppendResponse>> {
        // Events keep their ids, so an append the server did write and that is sent again
        // is answered with its first result.
        let Some((kind, payload)) = self
            .call(|out, id| wire::put_append(out, id, request))
            .await?
        else {
            return Ok(None);
        };
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

    /// Reads, a page at a time; `Ok(None)` when the server does not take reads over the
    /// framed protocol (the caller uses gRPC).
    pub async fn read(self: &Arc<Self>, request: ReadRequest) -> Result<Option<Pages>> {
        if self.no_reads.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Some(first) = self.page(&request).await? else {
            return Ok(None);
        };
        Ok(Some(Pages {
            framed: Arc::clone(self),
            head: first.head,
            buf: first.events.into_iter(),
            more: first.more,
            request,
            fetching: None,
            done: false,
        }))
    }

    /// One page of a read.
    async fn page(&self, request: &ReadRequest) -> Result<Option<Fetched>> {
        let message = pb::ReadRequest::from(request.clone()).encode_to_vec();
        let Some((kind, payload)) = self
            .call(|out, id| wire::put_frame(out, Kind::Read, id, &message))
            .await?
        else {
            return Ok(None);
        };
        if kind != Kind::Page {
            return match status_error(&payload) {
                Error::InvalidArgument { field, .. } if field == "frame" => {
                    self.no_reads.store(true, Ordering::Relaxed);
                    Ok(None)
                }
                e => Err(e),
            };
        }
        let bad = |why: &str| Error::Internal(format!("the server's Page frame {why}"));
        let page = wire::parse_page(&payload).ok_or_else(|| bad("is malformed"))?;
        let (head, more) = (page.head, page.more);
        let packed = Bytes::from(payload).slice(wire::PAGE_PREFIX..);
        let events = pb::packed::decode(&packed)
            .map_err(|e| bad(&format!("holds malformed events: {e}")))?;
        Ok(Some(Fetched { head, more, events }))
    }

    /// Sends the frame `frame` writes and waits for its answer; `Ok(None)` when the server
    /// does not speak the framed protocol. A request whose connection ends before its answer
    /// is sent again once, on a new connection (a server closes connections it finds idle,
    /// or to make room): requests are safe to send twice (an append's events keep their ids).
    async fn call(&self, frame: impl Fn(&mut Vec<u8>, u32)) -> Result<Option<(Kind, Vec<u8>)>> {
        let Some(conn) = self.conn().await? else {
            return Ok(None);
        };
        let answer = match conn.call(&frame).await {
            Err(Error::Unavailable(_)) if !conn.is_open() => {
                let Some(conn) = self.conn().await? else {
                    return Ok(None);
                };
                conn.call(&frame).await
            }
            other => other,
        };
        answer.map(Some)
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
            Some(k @ (Kind::Appended | Kind::Page | Kind::Error)) => k,
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

/// A page as received.
struct Fetched {
    head: Option<u64>,
    more: bool,
    events: Vec<RecordedEvent>,
}

type Fetching = Pin<Box<dyn Future<Output = Result<Option<Fetched>>> + Send>>;

/// A read's events, a page at a time. Each page after the first is a read of the same
/// request from after the last event handed out, with what is left of its limit; a forward
/// read ends at the head the first page was served at, so that events appended since are
/// not part of it, as they are not of a read over gRPC.
pub(crate) struct Pages {
    framed: Arc<Framed>,
    /// The request of the next page: its `limit` is what is left of the read's.
    request: ReadRequest,
    head: Option<u64>,
    buf: std::vec::IntoIter<RecordedEvent>,
    more: bool,
    fetching: Option<Fetching>,
    done: bool,
}

impl Pages {
    /// The head the read was served at.
    pub fn head(&self) -> Option<u64> {
        self.head
    }

    /// Moves the next page's request past `e`.
    fn advance(&mut self, e: &RecordedEvent) {
        if let Some(n) = &mut self.request.limit {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.more = false;
            }
        }
        let at = match self.request.source {
            Source::Stream(_) => e.revision,
            _ => e.position,
        };
        self.request.from = match self.request.direction {
            Direction::Forward => at.checked_add(1),
            Direction::Backward => at.checked_sub(1),
        };
        if self.request.from.is_none() {
            self.more = false;
        }
    }
}

impl Stream for Pages {
    type Item = Result<RecordedEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(e) = self.buf.next() {
                let forward = self.request.direction == Direction::Forward;
                if forward && self.head.is_none_or(|h| e.position > h) {
                    self.done = true;
                    return Poll::Ready(None);
                }
                self.advance(&e);
                return Poll::Ready(Some(Ok(e)));
            }
            if !self.more {
                self.done = true;
                return Poll::Ready(None);
            }
            let this = &mut *self;
            let fetching = this.fetching.get_or_insert_with(|| {
                let (framed, request) = (Arc::clone(&this.framed), this.request.clone());
                Box::pin(async move { framed.page(&request).await })
            });
            let fetched = ready!(fetching.as_mut().poll(cx));
            self.fetching = None;
            match fetched {
                Ok(Some(page)) => {
                    self.buf = page.events.into_iter();
                    self.more = page.more;
                }
                Ok(None) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Error::Unavailable(
                        "the server stopped taking framed reads in the middle of one".into(),
                    ))));
                }
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
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

    /// A server that takes the Hello, then answers the first request as a server older than
    /// framed reads answers a Read (an unknown kind) and closes; the number of connections
    /// it has taken.
    async fn server_without_reads() -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&taken);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut preface = [0u8; 8];
                    s.read_exact(&mut preface).await.unwrap();
                    let mut frames = Vec::new();
                    for i in 0..2 {
                        let mut h = [0u8; HEADER_LEN];
                        s.read_exact(&mut h).await.unwrap();
                        let h = Header::parse(&h);
                        let mut payload = vec![0u8; h.len as usize];
                        s.read_exact(&mut payload).await.unwrap();
                        frames.push(h);
                        if i == 0 {
                            let mut ready = Vec::new();
                            wire::put_frame(&mut ready, Kind::Ready, 0, wire::PREFACE);
                            s.write_all(&ready).await.unwrap();
                        }
                    }
                    let mut out = Vec::new();
                    let e = Error::invalid(
                        "frame",
                        format!("kind {} is not a frame a client sends", frames[1].kind),
                    );
                    let status = wire::encode_status(&pb::status_from_error(&e));
                    wire::put_frame(&mut out, Kind::Error, frames[1].id, &status);
                    let _ = s.write_all(&out).await;
                });
            }
        });
        (url, taken)
    }

    #[tokio::test]
    async fn a_server_that_refuses_read_frames_is_read_over_grpc() {
        let (url, taken) = server_without_reads().await;
        let framed = Arc::new(Framed::new(&url, None, Duration::from_secs(5)).unwrap());
        assert!(framed.read(ReadRequest::all()).await.unwrap().is_none());
        assert!(framed.no_reads.load(Ordering::Relaxed));
        assert!(!framed.use_grpc(), "appends still go framed");
        // Known now: the next read asks nothing of the server.
        assert!(framed.read(ReadRequest::all()).await.unwrap().is_none());
        assert_eq!(taken.load(Ordering::SeqCst), 1);
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
