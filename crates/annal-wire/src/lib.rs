//! The framed protocol: appends and short reads over plain TCP on the server's port, beside
//! gRPC and HTTP, without HTTP/2's per-request framing. docs/wire-protocol.md describes it in
//! full.
//!
//! A client opens the connection with [`PREFACE`], then sends frames. Every frame is a
//! 9-byte header (payload length `u32`, kind `u8`, request id `u32`, all little-endian)
//! and a payload. The first frame is [`Kind::Hello`] with the bearer token (empty without
//! one); the server answers [`Kind::Ready`] (payload: the preface again) or
//! [`Kind::Error`] and closes. Then [`Kind::Append`] frames carry an `annal.v1.AppendRequest`
//! and are answered, in any order and matched by request id, with [`Kind::Appended`]
//! (an `annal.v1.AppendResponse`) or [`Kind::Error`] (a status: see [`encode_status`]).
//! [`Kind::Read`] frames carry an `annal.v1.ReadRequest` and are answered with one
//! [`Kind::Page`] (see [`put_page`]): the read's first events, at most a page of them; the
//! client asks for the rest, if any, with further reads that start after the last event it
//! got. Many requests may be in flight on one connection.
//!
//! Both ends write frames through a [`FrameWriter`]; each brings its own reading. The
//! messages are `annal-proto`'s, and an Append is encoded straight from the core types
//! (`annal_proto::append`).

/// What a client sends first. It cannot begin an HTTP/1.1 request line, the HTTP/2 preface
/// or a TLS handshake, so the server tells the three apart by the first bytes.
pub const PREFACE: &[u8; 8] = b"ANNAL/1\n";

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 9;

/// The largest Hello payload (a bearer token).
pub const MAX_HELLO: usize = 4096;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client, first frame: the bearer token as UTF-8, empty for none.
    Hello = 1,
    /// Server, to a Hello: the preface again.
    Ready = 2,
    /// Client: an `annal.v1.AppendRequest`.
    Append = 3,
    /// Server, to an Append: an `annal.v1.AppendResponse`.
    Appended = 4,
    /// Server: a status (see [`encode_status`]), for the request id it answers, or for id 0
    /// when it concerns the connection itself (a refused Hello, say). After one that
    /// answers a breach of the protocol, the server closes the connection.
    Error = 5,
    /// Client: an `annal.v1.ReadRequest`.
    Read = 6,
    /// Server, to a Read: a page of its events (see [`put_page`]).
    Page = 7,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Ready,
            3 => Kind::Append,
            4 => Kind::Appended,
            5 => Kind::Error,
            6 => Kind::Read,
            7 => Kind::Page,
            _ => return None,
        })
    }
}

/// A frame header as read: the kind byte is kept raw so that an unknown one can be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub kind: u8,
    pub id: u32,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            kind: b[4],
            id: u32::from_le_bytes([b[5], b[6], b[7], b[8]]),
        }
    }

    pub fn encode(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4] = self.kind;
        b[5..9].copy_from_slice(&self.id.to_le_bytes());
        b
    }
}

/// Appends the header of a frame with a payload of `len` bytes. Payloads are bounded far
/// below 4 GiB by the server's limits; a longer one is a caller's bug.
fn put_header(out: &mut Vec<u8>, kind: Kind, id: u32, len: usize) {
    let len = u32::try_from(len).expect("a frame payload below 4 GiB");
    out.extend_from_slice(
        &Header {
            len,
            kind: kind as u8,
            id,
        }
        .encode(),
    );
}

/// Appends a whole frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, kind: Kind, id: u32, payload: &[u8]) {
    put_header(out, kind, id, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a frame whose payload is a protobuf message, encoded in place.
pub fn put_message(out: &mut Vec<u8>, kind: Kind, id: u32, message: &impl prost::Message) {
    let len = message.encoded_len();
    out.reserve(HEADER_LEN + len);
    put_header(out, kind, id, len);
    message
        .encode(out)
        .expect("a Vec grows to hold the message");
}

/// Appends an Append frame whose payload is `request`, encoded straight from the core types
/// (see `annal_proto::append`).
pub fn put_append(out: &mut Vec<u8>, id: u32, request: &annal_core::AppendRequest) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let len = annal_proto::append::encode_append(request, out);
    let mut header = Vec::with_capacity(HEADER_LEN);
    put_header(&mut header, Kind::Append, id, len);
    out[start..start + HEADER_LEN].copy_from_slice(&header);
}

/// The largest Read payload (an `annal.v1.ReadRequest`: a source, a position, a limit).
pub const MAX_READ_REQUEST: usize = 64 << 10;

/// A page ends once it holds this many bytes of packed events (it always holds at least one
/// event, however large), or the server's `read_batch_events` events.
pub const PAGE_BYTES: usize = 256 << 10;

/// A page, as [`put_page`] writes it and [`parse_page`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page<'a> {
    /// The log's last position when the read was served; `None` when the log was empty.
    pub head: Option<u64>,
    /// The read holds more events than the page: ask again from after its last event.
    pub more: bool,
    /// The page's events in `annal_proto::packed`'s encoding.
    pub packed: &'a [u8],
}

/// Flag bits of a page's first byte.
const PAGE_HEAD: u8 = 1;
const PAGE_MORE: u8 = 2;

/// Bytes of a Page payload before its packed events: the flags and the head.
pub const PAGE_PREFIX: usize = 9;

/// Appends a Page frame: flags `u8` (1: the head is known, 2: more events follow),
/// the head `u64` (0 when unknown), then the packed events to the end.
pub fn put_page(out: &mut Vec<u8>, id: u32, page: Page<'_>) {
    put_header(out, Kind::Page, id, PAGE_PREFIX + page.packed.len());
    let flags =
        if page.head.is_some() { PAGE_HEAD } else { 0 } | if page.more { PAGE_MORE } else { 0 };
    out.push(flags);
    out.extend_from_slice(&page.head.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(page.packed);
}

/// The page of a Page payload; `None` when it is not one.
pub fn parse_page(payload: &[u8]) -> Option<Page<'_>> {
    let flags = *payload.first()?;
    if flags & !(PAGE_HEAD | PAGE_MORE) != 0 {
        return None;
    }
    let head = u64::from_le_bytes(payload.get(1..PAGE_PREFIX)?.try_into().ok()?);
    Some(Page {
        head: (flags & PAGE_HEAD != 0).then_some(head),
        more: flags & PAGE_MORE != 0,
        packed: &payload[PAGE_PREFIX..],
    })
}

/// A status as an Error payload: code `u32`, message length `u32`, the message (UTF-8), then
/// the details (an `annal.v1.ErrorDetail`) to the end.
pub fn encode_status(status: &tonic::Status) -> Vec<u8> {
    let message = status.message().as_bytes();
    let mut out = Vec::with_capacity(8 + message.len() + status.details().len());
    out.extend_from_slice(&(status.code() as i32 as u32).to_le_bytes());
    out.extend_from_slice(&(message.len() as u32).to_le_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(status.details());
    out
}

/// The status of an Error payload; `None` when it is not one.
pub fn decode_status(payload: &[u8]) -> Option<tonic::Status> {
    let code = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?);
    let len = u32::from_le_bytes(payload.get(4..8)?.try_into().ok()?) as usize;
    let message = std::str::from_utf8(payload.get(8..8usize.checked_add(len)?)?).ok()?;
    let details = payload.get(8 + len..)?;
    Some(tonic::Status::with_details(
        tonic::Code::from_i32(code as i32),
        message,
        bytes::Bytes::copy_from_slice(details),
    ))
}

/// Whole frames onto a TCP connection from any task, without waiting.
///
/// [`send`](FrameWriter::send) writes a frame at once, in one non-blocking write, when the
/// socket takes all of it (the usual case); what it does not take is queued whole, behind
/// anything queued before, for [`run`](FrameWriter::run) to send once the socket is
/// writable. Since nothing waits halfway, a task dropped at any point never leaves half a
/// frame on the connection, and the frames of different tasks never interleave.
pub struct FrameWriter {
    socket: tokio::net::tcp::OwnedWriteHalf,
    out: std::sync::Mutex<Queued>,
    wake: tokio::sync::Notify,
    /// Told each time queued bytes went out.
    sent: tokio::sync::Notify,
}

#[derive(Default)]
struct Queued {
    bytes: Vec<u8>,
    /// Queued bytes not yet written, with those `run` is writing.
    unsent: usize,
    /// `run` is sending: new frames go behind what it holds.
    flushing: bool,
    closing: bool,
    /// A write failed, or the connection was given up: nothing more is sent.
    failed: bool,
}

impl FrameWriter {
    pub fn new(socket: tokio::net::tcp::OwnedWriteHalf) -> FrameWriter {
        FrameWriter {
            socket,
            out: std::sync::Mutex::new(Queued::default()),
            wake: tokio::sync::Notify::new(),
            sent: tokio::sync::Notify::new(),
        }
    }

    /// Waits until fewer than `limit` bytes wait to be sent: a peer that does not read its
    /// answers holds back the reading of its requests.
    pub async fn room(&self, limit: usize) {
        loop {
            let sent = self.sent.notified();
            {
                let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
                // A failed connection has room: the next send says that it failed.
                if out.unsent < limit || out.failed {
                    return;
                }
            }
            sent.await;
        }
    }

    /// Sends one or more whole frames, now or soon; an error when the connection has failed.
    pub fn send(&self, frames: &[u8]) -> std::io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if out.failed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the connection failed or was closed",
            ));
        }
        if out.flushing {
            out.bytes.extend_from_slice(frames);
            out.unsent += frames.len();
            return Ok(());
        }
        let written = match self.socket.try_write(frames) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                drop(out);
                self.abandon();
                return Err(e);
            }
        };
        if written < frames.len() {
            out.bytes.extend_from_slice(&frames[written..]);
            out.unsent += frames.len() - written;
            out.flushing = true;
            drop(out);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// True once a write failed or the connection was given up.
    pub fn failed(&self) -> bool {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).failed
    }

    /// Returns once a write failed or the connection was given up.
    pub async fn given_up(&self) {
        loop {
            let sent = self.sent.notified();
            if self.failed() {
                return;
            }
            sent.await;
        }
    }

    /// Makes [`run`](FrameWriter::run) return once everything queued is sent.
    pub fn close(&self) {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).closing = true;
        self.wake.notify_one();
    }

    /// Gives the connection up (also what a failed write does): what is queued is dropped,
    /// [`run`](FrameWriter::run) returns at once (even while the peer reads nothing), and
    /// sends fail.
    pub fn abandon(&self) {
        {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            out.failed = true;
            out.bytes = Vec::new();
            out.unsent = 0;
        }
        self.wake.notify_one();
        self.sent.notify_waiters();
    }

    /// Sends what [`send`](FrameWriter::send) queued, until [`close`](FrameWriter::close),
    /// [`abandon`](FrameWriter::abandon) or a failed write (its error).
    pub async fn run(&self) -> std::io::Result<()> {
        let result = self.flush_until_closed().await;
        if result.is_err() {
            self.abandon();
        }
        result
    }

    async fn flush_until_closed(&self) -> std::io::Result<()> {
        loop {
            self.wake.notified().await;
            loop {
                let chunk = {
                    let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
                    if out.failed {
                        return Ok(());
                    }
                    if out.bytes.is_empty() {
                        out.flushing = false;
                        if out.closing {
                            return Ok(());
                        }
                        break;
                    }
                    out.flushing = true;
                    std::mem::take(&mut out.bytes)
                };
                let mut at = 0;
                while at < chunk.len() {
                    tokio::select! {
                        ready = self.socket.writable() => ready?,
                        // A close or an abandon; only the latter stops the write (a
                        // close is seen once the queue is empty).
                        () = self.wake.notified() => {
                            if self.out.lock().unwrap_or_else(|e| e.into_inner()).failed {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                    match self.socket.try_write(&chunk[at..]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                {
                    let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
                    out.unsent = out.unsent.saturating_sub(chunk.len());
                }
                self.sent.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annal_core::Error;

    #[test]
    fn headers_round_trip_little_endian() {
        let h = Header {
            len: 0x0102_0304,
            kind: Kind::Append as u8,
            id: 7,
        };
        let b = h.encode();
        assert_eq!(b, [4, 3, 2, 1, 3, 7, 0, 0, 0]);
        assert_eq!(Header::parse(&b), h);
    }

    #[test]
    fn the_preface_is_neither_http_nor_tls() {
        assert!(!PREFACE.starts_with(b"PRI * HTTP/2.0"));
        for method in ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH"] {
            assert!(!PREFACE.starts_with(format!("{method} ").as_bytes()));
        }
        assert_ne!(PREFACE[0], 0x16, "a TLS handshake record begins with 0x16");
    }

    #[test]
    fn statuses_carry_the_exact_error() {
        let e = Error::WrongExpectedRevision {
            stream: "account-1".into(),
            expected: annal_core::ExpectedRevision::Exact(3),
            actual: Some(5),
        };
        let status = annal_proto::status_from_error(&e);
        let back = decode_status(&encode_status(&status)).expect("a status");
        assert_eq!(back.code(), status.code());
        assert_eq!(back.message(), status.message());
        assert_eq!(annal_proto::error_from_status(&back), e);
        assert!(decode_status(&[1, 0, 0]).is_none());
        assert!(decode_status(&[1, 0, 0, 0, 9, 0, 0, 0, b'x']).is_none());
    }

    /// A loopback connection: the peer's end, and this end's read half and writer with its
    /// flusher running.
    async fn writer_and_peer() -> (
        tokio::net::TcpStream,
        tokio::net::tcp::OwnedReadHalf,
        std::sync::Arc<FrameWriter>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (peer, _) = accepted.unwrap();
        let (read, write) = client.unwrap().into_split();
        let writer = std::sync::Arc::new(FrameWriter::new(write));
        let flusher = tokio::spawn({
            let w = writer.clone();
            async move { w.run().await }
        });
        (peer, read, writer, flusher)
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_fills_the_queue_and_room_waits() {
        use tokio::io::AsyncReadExt;
        let (mut peer, _read, writer, flusher) = writer_and_peer().await;
        let frame = vec![7u8; 64 << 10];
        let limit = 1 << 20;
        let mut sent = 0usize;
        // The socket buffers fill, then the queue: room() stops answering at once.
        loop {
            let quick =
                tokio::time::timeout(std::time::Duration::from_millis(200), writer.room(limit))
                    .await;
            if quick.is_err() {
                break;
            }
            writer.send(&frame).unwrap();
            sent += frame.len();
            assert!(sent < 512 << 20, "the queue never filled");
        }
        // Once the peer reads, everything arrives whole and in order, and there is room again.
        let reading = tokio::spawn(async move {
            let mut got = vec![0u8; sent];
            peer.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|&b| b == 7));
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), writer.room(limit))
            .await
            .expect("room once the peer reads");
        reading.await.unwrap();
        writer.close();
        flusher.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_abandoned_writer_stops_at_once_though_the_peer_reads_nothing() {
        let (_peer, _read, writer, flusher) = writer_and_peer().await;
        let frame = vec![1u8; 1 << 20];
        // Far more than the socket buffers hold: the flusher is stuck waiting to write once
        // it has run (on this one-thread runtime, when this task yields).
        for _ in 0..64 {
            writer.send(&frame).unwrap();
        }
        tokio::task::yield_now().await;
        assert!(!flusher.is_finished());
        writer.abandon();
        tokio::time::timeout(std::time::Duration::from_secs(2), flusher)
            .await
            .expect("the flusher returns at once")
            .unwrap()
            .unwrap();
        assert!(writer.send(b"more").is_err(), "nothing is sent after");
        tokio::time::timeout(std::time::Duration::from_secs(1), writer.room(1))
            .await
            .expect("room does not wait on a connection given up");
    }

    #[test]
    fn pages_round_trip_and_odd_flags_are_refused() {
        for (head, more) in [(None, false), (Some(0), true), (Some(u64::MAX), false)] {
            let mut out = Vec::new();
            let page = Page {
                head,
                more,
                packed: b"events",
            };
            put_page(&mut out, 9, page);
            let h = Header::parse(out[..HEADER_LEN].try_into().unwrap());
            assert_eq!(
                (h.len as usize, h.kind, h.id),
                (out.len() - HEADER_LEN, 7, 9)
            );
            assert_eq!(parse_page(&out[HEADER_LEN..]), Some(page));
        }
        assert_eq!(parse_page(&[PAGE_HEAD, 1, 0, 0]), None, "a short head");
        assert_eq!(
            parse_page(&[4, 0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "an unknown flag"
        );
        assert_eq!(parse_page(&[]), None);
    }

    #[test]
    fn message_frames_hold_their_length() {
        let m = annal_proto::ServerInfoRequest {};
        let mut out = Vec::new();
        put_message(&mut out, Kind::Append, 3, &m);
        put_frame(&mut out, Kind::Hello, 0, b"token");
        let first = Header::parse(out[..HEADER_LEN].try_into().unwrap());
        assert_eq!((first.len, first.kind, first.id), (0, 3, 3));
        let second = Header::parse(out[HEADER_LEN..2 * HEADER_LEN].try_into().unwrap());
        assert_eq!((second.len, second.kind), (5, 1));
        assert_eq!(&out[2 * HEADER_LEN..], b"token");
        assert_eq!(Kind::from_u8(5), Some(Kind::Error));
        assert_eq!(Kind::from_u8(7), Some(Kind::Page));
        assert_eq!(Kind::from_u8(9), None);
    }
}
