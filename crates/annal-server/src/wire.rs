//! The framed protocol (`annal_wire`, docs/wire-protocol.md) on a plain TCP connection that
//! opened with its preface.
//!
//! One task reads frames; each append or read runs in a task of its own, so that many are
//! in flight on one connection (at most `max_streams_per_connection`, the same bound as
//! HTTP/2 streams) and are answered as they finish. A read is answered with one page of at
//! most `read_batch_events` events and about [`wire::PAGE_BYTES`], built under one of the
//! server's `max_reads` read permits and one of the connection's
//! [`PAGES_PER_CONNECTION`]. Every append pays into the in-flight append
//! budget for each piece of its payload before reading it, as a gRPC or HTTP append does, so
//! a flood of appends waits in TCP flow control instead of in the server's memory, and a
//! header whose payload never comes holds nothing. Each append's task writes its answer
//! itself through the connection's [`FrameWriter`].
//!
//! A frame that breaks the protocol (an unknown kind, a Hello that is not first, request id
//! 0) is answered with an Error frame and the connection is closed: after it, the stream of
//! frames cannot be trusted. An append over the size limit is read past without being kept
//! and refused alone, and a malformed append message is answered with an error for that
//! request alone, since their frames were whole. A client has `hello_timeout` for its Hello
//! (with its token), and each payload must keep arriving as an HTTP body must
//! (`body_timeout`, `body_min_rate`). On shutdown the reader stops taking new frames, the
//! appends in flight finish and are answered, and the connection closes.

use std::sync::Arc;
use std::time::Duration;

use annal_core::Error;
use annal_proto as pb;
use annal_proto::append::{decode_append, DecodeAppendError};
use annal_wire::{self as wire, FrameWriter, Header, Kind, HEADER_LEN};
use prost::Message;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::access::Access;
use crate::budget::Pace;
use crate::conns::Conn;
use crate::{metrics, public, stopping, Budget, State};

/// Answers waiting to be sent beyond which no more requests are read: a client that does not
/// read its answers stops being served instead of growing the server's memory.
const MAX_UNSENT: usize = 1 << 20;

/// Pages of reads one connection builds at once: each holds up to about
/// [`wire::PAGE_BYTES`] until it is sent, so a connection holds a few of them, not one for
/// each of its requests in flight.
const PAGES_PER_CONNECTION: usize = 4;

/// A failure that ends the connection: the request id it concerns (0 for none) and why.
type Fatal = (u32, Error);

/// Reads the first bytes of a connection until they are the framed protocol's preface
/// (true) or cannot be (false, with the bytes read, which belong to HTTP or TLS); `None`
/// when the client closed first. A preface that arrives in pieces is waited for on the
/// socket.
pub async fn opens_with_preface(socket: &mut TcpStream) -> Option<(bool, Vec<u8>)> {
    let mut first = Vec::with_capacity(wire::PREFACE.len());
    loop {
        let have = first.len();
        let mut more = [0u8; wire::PREFACE.len()];
        let n = socket
            .read(&mut more[..wire::PREFACE.len() - have])
            .await
            .ok()?;
        if n == 0 {
            return None;
        }
        first.extend_from_slice(&more[..n]);
        if first[..] != wire::PREFACE[..first.len()] {
            return Some((false, first));
        }
        if first.len() == wire::PREFACE.len() {
            return Some((true, first));
        }
    }
}

/// A connection whose first bytes were read already, and are read again first.
pub struct Rewound {
    first: Vec<u8>,
    at: usize,
    socket: TcpStream,
}

impl Rewound {
    pub fn new(first: Vec<u8>, socket: TcpStream) -> Rewound {
        Rewound {
            first,
            at: 0,
            socket,
        }
    }
}

impl tokio::io::AsyncRead for Rewound {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.socket).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewound {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// Serves a connection whose preface [`opens_with_preface`] has read, until the client
/// closes it, it breaks the protocol, or the server shuts down.
pub async fn serve_connection(socket: TcpStream, state: Arc<State>, conn: Arc<Conn>) {
    let peer = socket.peer_addr().ok();
    let (read, write) = socket.into_split();
    let writer = Arc::new(FrameWriter::new(write));
    // Stopped with this task, also when the server gives up on the connection at the end of
    // its shutdown grace.
    let mut flusher = AbortOnDrop(tokio::spawn({
        let writer = Arc::clone(&writer);
        async move { writer.run().await }
    }));
    let places = state.config.limits.max_streams_per_connection;
    let in_flight = Arc::new(Semaphore::new(places as usize));
    let mut read = BufReader::with_capacity(64 << 10, read);
    if let Err((id, e)) = read_frames(&mut read, &state, &writer, &in_flight, &conn).await {
        tracing::debug!(?peer, error = %e, "closing a framed connection");
        metrics::request("wire", "refused");
        let _ = writer.send(&error_frame(id, e));
    }
    // Every append in flight answers before the connection closes, and a client that does
    // not read its answers gets a little while to, not for ever.
    let _all = in_flight.acquire_many(places).await;
    writer.close();
    if tokio::time::timeout(state.config.limits.answer_timeout, &mut flusher.0)
        .await
        .is_err()
    {
        tracing::debug!(?peer, "a framed client did not read its last answers");
        writer.abandon();
    }
}

/// A task stopped when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Error frame that answers request `id` with `e`, counted in the requests metric by
/// its status class.
fn answer_error(id: u32, e: Error) -> Vec<u8> {
    let status = crate::json::ErrorJson::from_error(&e).0;
    metrics::request("wire", metrics::class(status));
    error_frame(id, e)
}

fn error_frame(id: u32, e: Error) -> Vec<u8> {
    let status = pb::status_from_error(&public(e));
    let mut out = Vec::new();
    wire::put_frame(&mut out, Kind::Error, id, &wire::encode_status(&status));
    out
}

/// The next frame header; `None` at a clean end of the connection between frames.
async fn read_header(read: &mut BufReader<OwnedReadHalf>) -> Result<Option<Header>, Fatal> {
    let mut h = [0u8; HEADER_LEN];
    match read.read_exact(&mut h).await {
        Ok(_) => Ok(Some(Header::parse(&h))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err((0, Error::Unavailable(format!("reading a frame: {e}")))),
    }
}

/// The Hello's payload (a token), which must arrive by `deadline`.
async fn read_hello(
    read: &mut BufReader<OwnedReadHalf>,
    h: Header,
    deadline: Instant,
    limit: Duration,
) -> Result<Vec<u8>, Fatal> {
    let mut payload = vec![0u8; h.len as usize];
    match tokio::time::timeout_at(deadline, read.read_exact(&mut payload)).await {
        Ok(Ok(_)) => Ok(payload),
        Ok(Err(e)) => Err((h.id, ended(e))),
        Err(_) => Err((
            h.id,
            Error::Unavailable(format!(
                "no whole Hello within {} of the preface",
                humantime::format_duration(limit)
            )),
        )),
    }
}

fn ended(e: std::io::Error) -> Error {
    Error::Unavailable(format!("the connection ended inside a frame: {e}"))
}

/// Bytes of a payload paid for and read at a time.
const PIECE: usize = 64 << 10;

/// Reads a frame's payload as it arrives, at the pace a body must keep ([`Pace`]). With a
/// `hold`, each piece is paid for in the in-flight budget before it is read, and the
/// payload is kept; without, it is read past and dropped (a refused request). The caller
/// has checked its length against the limits.
async fn read_payload(
    read: &mut BufReader<OwnedReadHalf>,
    h: Header,
    state: &State,
    hold: Option<&Budget>,
) -> Result<Vec<u8>, Fatal> {
    let len = h.len as usize;
    // Reserved, not touched: memory is used as bytes arrive.
    let mut payload = Vec::with_capacity(if hold.is_some() { len } else { 0 });
    let mut scratch = Vec::new();
    let mut pace = Pace::new(&state.config.limits);
    let _receiving = metrics::Receiving::new();
    let (mut paid, mut received) = (0, 0);
    while received < len {
        if paid == received {
            let n = PIECE.min(len - paid);
            if let Some(hold) = hold {
                let since = Instant::now();
                state.take(hold, n).await.map_err(|e| (h.id, e))?;
                pace.waited(since.elapsed());
            }
            paid += n;
        }
        let want = (paid - received) as u64;
        let buf = if hold.is_some() {
            &mut payload
        } else {
            scratch.clear();
            &mut scratch
        };
        match tokio::time::timeout_at(pace.deadline(), (&mut *read).take(want).read_buf(buf)).await
        {
            Ok(Ok(0)) => {
                return Err((
                    h.id,
                    Error::Unavailable("the connection ended inside a frame".into()),
                ))
            }
            Ok(Ok(n)) => {
                received += n;
                pace.received(n);
            }
            Ok(Err(e)) => return Err((h.id, ended(e))),
            Err(_) => {
                metrics::slow_body("wire");
                return Err((h.id, Error::Unavailable(pace.late("the payload").0)));
            }
        }
    }
    Ok(payload)
}

async fn read_frames(
    read: &mut BufReader<OwnedReadHalf>,
    state: &Arc<State>,
    writer: &Arc<FrameWriter>,
    in_flight: &Arc<Semaphore>,
    conn: &Arc<Conn>,
) -> Result<(), Fatal> {
    let limits = &state.config.limits;
    let hello_by = Instant::now() + limits.hello_timeout;
    let hello = match tokio::time::timeout_at(hello_by, read_header(read)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err((
                0,
                Error::Unavailable(format!(
                    "no Hello within {} of the preface",
                    humantime::format_duration(limits.hello_timeout)
                )),
            ))
        }
    };
    if hello.kind != Kind::Hello as u8 {
        return Err((
            hello.id,
            Error::invalid(
                "frame",
                format!(
                    "the first frame must be Hello (kind 1), not kind {}",
                    hello.kind
                ),
            ),
        ));
    }
    if hello.len as usize > wire::MAX_HELLO {
        return Err((
            hello.id,
            Error::TooLarge {
                what: "Hello frame".into(),
                size: hello.len as usize,
                limit: wire::MAX_HELLO,
            },
        ));
    }
    let token = read_hello(read, hello, hello_by, limits.hello_timeout).await?;
    let access = state
        .authorize(Some(&token), false, "in the Hello frame")
        .map_err(|e| (hello.id, e))?;
    conn.authenticate();
    let mut ready = Vec::new();
    wire::put_frame(&mut ready, Kind::Ready, hello.id, wire::PREFACE);
    gone(writer.send(&ready))?;

    let max_len = state.max_append_message();
    let pages = Arc::new(Semaphore::new(PAGES_PER_CONNECTION));
    let mut shutdown = state.shutdown.clone();
    // Closed for idleness or to make room, the connection stops reading as at shutdown. One
    // watch serves the connection's life: it wakes only at its deadlines and looks again at
    // how long the connection has been quiet each time.
    let closed = conn.closed(limits.idle_timeout, hello_by);
    tokio::pin!(closed);
    loop {
        tokio::select! {
            () = writer.room(MAX_UNSENT) => {}
            () = stopping(&mut shutdown) => return Ok(()),
            () = &mut closed => return Ok(()),
        }
        let place = tokio::select! {
            p = Arc::clone(in_flight).acquire_owned() => p.expect("never closed"),
            () = stopping(&mut shutdown) => return Ok(()),
            () = &mut closed => return Ok(()),
        };
        let header = tokio::select! {
            h = read_header(read), if !writer.failed() => match h? {
                Some(h) => h,
                None => return Ok(()),
            },
            // Given up (a client that took no answer for the write timeout) or broken.
            () = writer.given_up() => return Err((
                0,
                Error::Unavailable("the connection's answers could not be sent".into()),
            )),
            () = stopping(&mut shutdown) => return Ok(()),
            () = &mut closed => return Ok(()),
        };
        let busy = conn.begin();
        if header.id == 0 {
            return Err((
                0,
                Error::invalid(
                    "frame",
                    "request id 0 is reserved for the connection itself",
                ),
            ));
        }
        if header.kind == Kind::Read as u8 {
            let Some(payload) =
                read_request(read, header, state, &mut shutdown, &mut closed).await?
            else {
                return Ok(());
            };
            let (state, writer, pages) =
                (Arc::clone(state), Arc::clone(writer), Arc::clone(&pages));
            tokio::spawn(async move {
                match payload {
                    Ok(payload) => {
                        let _page = pages.acquire().await.expect("never closed");
                        answer_read(&state, &writer, header.id, &payload).await;
                    }
                    Err(refusal) => {
                        let _ = writer.send(&refusal);
                    }
                }
                drop((place, busy));
            });
            continue;
        }
        if header.kind != Kind::Append as u8 {
            return Err((
                header.id,
                Error::invalid(
                    "frame",
                    format!(
                        "kind {} is not a frame a client sends after Hello (Append is 3, Read 6)",
                        header.kind
                    ),
                ),
            ));
        }
        let len = header.len as usize;
        let refusal = if len > max_len {
            Some(Error::TooLarge {
                what: "append request".into(),
                size: len,
                limit: max_len,
            })
        } else if access == Access::Read {
            state
                .authorize(Some(&token), true, "in the Hello frame")
                .err()
        } else {
            None
        };
        if let Some(e) = refusal {
            // Read past without being kept, refused alone; the connection goes on, as over
            // gRPC.
            read_payload(read, header, state, None).await?;
            gone(writer.send(&answer_error(header.id, e)))?;
            drop(place);
            continue;
        }
        let budget = Budget::default();
        let awaiting = conn.awaiting();
        let payload = tokio::select! {
            p = read_payload(read, header, state, Some(&budget)) => p?,
            () = stopping(&mut shutdown) => return Ok(()),
            () = &mut closed => return Ok(()),
        };
        drop(awaiting);
        let payload = annal_core::Bytes::from(payload);
        let (state, writer) = (Arc::clone(state), Arc::clone(writer));
        tokio::spawn(async move {
            let frame = match append(&state, payload, budget).await {
                Ok(response) => {
                    metrics::request("wire", "2xx");
                    let mut out = Vec::with_capacity(HEADER_LEN + response.encoded_len());
                    wire::put_message(&mut out, Kind::Appended, header.id, &response);
                    out
                }
                Err(e) => answer_error(header.id, e),
            };
            // A connection that failed is noticed by the reader; this answer is lost with it.
            let _ = writer.send(&frame);
            drop((place, busy));
        });
    }
}

/// A Read frame's payload, read whole (`Ok(Ok)`), or read past and refused alone with the
/// Error frame that answers it (`Ok(Err)`); `None` when the server stops or the connection
/// is closed for idleness meanwhile.
async fn read_request(
    read: &mut BufReader<OwnedReadHalf>,
    header: Header,
    state: &State,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    closed: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Option<Result<Vec<u8>, Vec<u8>>>, Fatal> {
    let len = header.len as usize;
    if len > wire::MAX_READ_REQUEST {
        read_payload(read, header, state, None).await?;
        let e = Error::TooLarge {
            what: "read request".into(),
            size: len,
            limit: wire::MAX_READ_REQUEST,
        };
        return Ok(Some(Err(answer_error(header.id, e))));
    }
    // Paid for while it arrives, like an append's; small, and let go once read.
    let budget = Budget::default();
    tokio::select! {
        p = read_payload(read, header, state, Some(&budget)) => Ok(Some(Ok(p?))),
        () = stopping(shutdown) => Ok(None),
        () = closed.as_mut() => Ok(None),
    }
}

/// Answers a Read. The page's share of the answer budget is kept until the page has left
/// (but for the 1 MiB a connection may have unsent); a client that takes nothing for
/// `write_timeout` meanwhile is given up.
async fn answer_read(state: &State, writer: &FrameWriter, id: u32, payload: &[u8]) {
    if writer.failed() {
        return;
    }
    let (frame, held) = page(state, id, payload).await;
    // A connection that failed is noticed by the reader; this answer is lost with it.
    let _ = writer.send(&frame);
    drop(frame);
    if held.is_some() {
        let wait = state.config.limits.write_timeout;
        if tokio::time::timeout(wait, writer.room(MAX_UNSENT))
            .await
            .is_err()
        {
            tracing::debug!("a framed client took no answer for the write timeout");
            writer.abandon();
        }
    }
}

/// The answer to a Read: a Page frame with the read's first page and its share of the
/// answer budget, or an Error frame.
async fn page(
    state: &State,
    id: u32,
    payload: &[u8],
) -> (Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>) {
    let request = pb::ReadRequest::decode(payload)
        .map_err(|e| {
            Error::invalid(
                "request",
                format!("the Read frame does not hold an annal.v1.ReadRequest: {e}"),
            )
        })
        .and_then(pb::read_request);
    let page = match request {
        Ok(request) => state.read_page(request, wire::PAGE_BYTES).await,
        Err(e) => Err(e),
    };
    match page {
        Ok((page, held)) => {
            metrics::request("wire", "2xx");
            let mut out = Vec::with_capacity(HEADER_LEN + wire::PAGE_PREFIX + page.packed.len());
            let page = wire::Page {
                head: page.head,
                more: page.more,
                packed: &page.packed,
            };
            wire::put_page(&mut out, id, page);
            (out, Some(held))
        }
        Err(e) => (answer_error(id, e), None),
    }
}

/// A failed write ends the connection.
fn gone(sent: std::io::Result<()>) -> Result<(), Fatal> {
    sent.map_err(|e| {
        (
            0,
            Error::Unavailable(format!("writing to the client failed: {e}")),
        )
    })
}

/// Decodes and appends a payload; `budget` is its share of the in-flight budget, kept until
/// the store lets go of the request.
async fn append(
    state: &State,
    payload: annal_core::Bytes,
    budget: Budget,
) -> Result<pb::AppendResponse, Error> {
    let request = decode_append(&payload).map_err(|e| match e {
        DecodeAppendError::Malformed(e) => Error::invalid(
            "request",
            format!("the Append frame does not hold an annal.v1.AppendRequest: {e}"),
        ),
        DecodeAppendError::Invalid(e) => e,
    })?;
    let result = state
        .append(request, payload.len(), Some(budget), false)
        .await?;
    Ok(result.into())
}
