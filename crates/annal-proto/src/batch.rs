//! `annal.v1.ReadResponse`, written by hand instead of generated: on the sending side it holds
//! the engine's events and encodes them straight into the message buffer (packed, or as
//! `RecordedEvent` messages), so a batch is copied once on its way to the socket; on the
//! receiving side it is the plain message, its `packed` field a slice of the received buffer.

use annal_core as core;
use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

use crate::{packed, recorded_event, RecordedEvent};

/// A batch of events.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ReadResponse {
    /// Field 1: events as messages (what a client gets that did not ask for `packed`).
    pub events: Vec<RecordedEvent>,
    /// Field 2: events in the packed encoding, as received.
    pub packed: Bytes,
    /// Events to send in the packed encoding as field 2 (sending side only).
    pub to_pack: Vec<core::RecordedEvent>,
}

impl ReadResponse {
    /// A batch to send, packed or as messages.
    pub fn of(events: Vec<core::RecordedEvent>, packed: bool) -> Self {
        if packed {
            ReadResponse {
                to_pack: events,
                ..Default::default()
            }
        } else {
            ReadResponse {
                events: events.into_iter().map(Into::into).collect(),
                ..Default::default()
            }
        }
    }

    /// The batch's events, whichever way they came.
    pub fn into_events(self) -> core::Result<Vec<core::RecordedEvent>> {
        let mut out = packed::decode(&self.packed)?;
        out.reserve(self.events.len() + self.to_pack.len());
        for e in self.events {
            out.push(recorded_event(e)?);
        }
        out.extend(self.to_pack);
        Ok(out)
    }

    fn packed_len(&self) -> usize {
        self.packed.len() + self.to_pack.iter().map(packed::encoded_len).sum::<usize>()
    }
}

impl prost::Message for ReadResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for e in &self.events {
            encoding::message::encode(1, e, buf);
        }
        let len = self.packed_len();
        if len > 0 {
            encoding::encode_key(2, WireType::LengthDelimited, buf);
            encoding::encode_varint(len as u64, buf);
            buf.put_slice(&self.packed);
            packed::encode_into(&self.to_pack, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::message::merge_repeated(wire_type, &mut self.events, buf, ctx),
            2 => encoding::bytes::merge(wire_type, &mut self.packed, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let len = self.packed_len();
        encoding::message::encoded_len_repeated(1, &self.events)
            + if len > 0 {
                encoding::key_len(2) + encoding::encoded_len_varint(len as u64) + len
            } else {
                0
            }
    }

    fn clear(&mut self) {
        self.events.clear();
        self.packed = Bytes::new();
        self.to_pack.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn events() -> Vec<core::RecordedEvent> {
        (0..5u64)
            .map(|i| core::RecordedEvent {
                id: core::Uuid::from_u128(u128::from(i) + 1),
                stream_id: format!("s-{i}").into(),
                revision: 0,
                position: i,
                recorded_at: core::Timestamp(i as i64),
                event_type: "T".into(),
                schema_version: 1,
                content_type: "application/json".into(),
                metadata: core::Metadata::default(),
                data: format!("{{\"i\":{i}}}").into(),
                tags: vec![format!("n:{i}").into()],
            })
            .collect()
    }

    #[test]
    fn both_ways_decode_to_the_same_events() {
        for packed in [false, true] {
            let sent = ReadResponse::of(events(), packed);
            let wire = sent.encode_to_vec();
            assert_eq!(wire.len(), sent.encoded_len());
            let got = ReadResponse::decode(Bytes::from(wire)).unwrap();
            assert_eq!(got.events.is_empty(), packed);
            assert_eq!(got.into_events().unwrap(), events());
        }
    }
}
