//! The framed append protocol: appends over plain TCP on the server's port, beside gRPC and
//! HTTP, without HTTP/2's per-request framing. docs/wire-protocol.md describes it in full.
//!
//! A client opens the connection with [`PREFACE`], then sends frames. Every frame is a
//! 9-byte header (payload length `u32`, kind `u8`, request id `u32`, all little-endian)
//! and a payload. The first frame is [`Kind::Hello`] with the bearer token (empty without
//! one); the server answers [`Kind::Ready`] (payload: the preface again) or
//! [`Kind::Error`] and closes. Then [`Kind::Append`] frames carry an `annal.v1.AppendRequest`
//! and are answered, in any order and matched by request id, with [`Kind::Appended`]
//! (an `annal.v1.AppendResponse`) or [`Kind::Error`] (a status: see [`encode_status`]).
//! Many appends may be in flight on one connection.
//!
//! This module holds only the encoding; the server and the client bring the I/O.

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
    /// Server: a status (see [`encode_status`]). Request id 0 means the connection itself
    /// failed and the server closes it after this frame.
    Error = 5,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Ready,
            3 => Kind::Append,
            4 => Kind::Appended,
            5 => Kind::Error,
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

/// Appends a whole frame to `out`. Payloads are bounded far below 4 GiB by the server's
/// limits; a longer one is a caller's bug.
pub fn put_frame(out: &mut Vec<u8>, kind: Kind, id: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("a frame payload below 4 GiB");
    out.extend_from_slice(
        &Header {
            len,
            kind: kind as u8,
            id,
        }
        .encode(),
    );
    out.extend_from_slice(payload);
}

/// Appends a frame whose payload is a protobuf message, encoded in place.
pub fn put_message(out: &mut Vec<u8>, kind: Kind, id: u32, message: &impl prost::Message) {
    let len = message.encoded_len();
    out.reserve(HEADER_LEN + len);
    let len32 = u32::try_from(len).expect("a frame payload below 4 GiB");
    out.extend_from_slice(
        &Header {
            len: len32,
            kind: kind as u8,
            id,
        }
        .encode(),
    );
    message
        .encode(out)
        .expect("a Vec grows to hold the message");
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
        let status = crate::status_from_error(&e);
        let back = decode_status(&encode_status(&status)).expect("a status");
        assert_eq!(back.code(), status.code());
        assert_eq!(back.message(), status.message());
        assert_eq!(crate::error_from_status(&back), e);
        assert!(decode_status(&[1, 0, 0]).is_none());
        assert!(decode_status(&[1, 0, 0, 0, 9, 0, 0, 0, b'x']).is_none());
    }

    #[test]
    fn message_frames_hold_their_length() {
        let m = crate::ServerInfoRequest {};
        let mut out = Vec::new();
        put_message(&mut out, Kind::Append, 3, &m);
        put_frame(&mut out, Kind::Hello, 0, b"token");
        let first = Header::parse(out[..HEADER_LEN].try_into().unwrap());
        assert_eq!((first.len, first.kind, first.id), (0, 3, 3));
        let second = Header::parse(out[HEADER_LEN..2 * HEADER_LEN].try_into().unwrap());
        assert_eq!((second.len, second.kind), (5, 1));
        assert_eq!(&out[2 * HEADER_LEN..], b"token");
        assert_eq!(Kind::from_u8(5), Some(Kind::Error));
        assert_eq!(Kind::from_u8(9), None);
    }
}
