//! The protobuf codec of the service, on both ends: tonic's prost codec with buffers sized
//! for Annal's batches. tonic starts each message buffer at 8 KiB and grows it by
//! reallocating and copying; a read batch is some 100 KiB, so the default setting copied
//! every batch several times over before it reached the socket.

use std::marker::PhantomData;

use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The initial buffer of a message being encoded or decoded, and how much encoded output
/// gathers before it is handed to the connection.
const BUFFER: usize = 256 << 10;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, BUFFER)
}

/// A prost codec with large buffers.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
