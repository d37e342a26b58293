//! The gRPC codec of every meshkv service and client: tonic's prost codec
//! with a first buffer of 1 KiB instead of 8 KiB.
//!
//! tonic allocates that buffer once per RPC to encode the response (and
//! once per request to decode it). Nearly every meshkv message is a few
//! hundred bytes. With glibc's malloc, 1 KiB came from its per-thread cache
//! where 8 KiB took the slower path that also merges free chunks: 4% less
//! CPU per replicated write, measured before the binary moved to jemalloc,
//! whose thread cache serves both sizes; what is left there is less memory
//! touched per RPC. Larger messages (replication batches, dumps) grow the
//! buffer as they need.
//! tonic's `codec_buffers` example shows the pattern; `build.rs` points the
//! generated code here with `codec_path`.
//!
//! Decoding also counts what a message will cost once decoded. A repeated
//! field of empty items (`1a 00` over and over) costs two bytes on the wire
//! and a hundred or more as a struct: 48 MiB of them decoded into 2.6 GiB.
//! Before prost runs, the decoder counts the message's top-level fields and
//! charges [`DECODED_FIELD_BYTES`] for each to the [`DecodeCharge`] of the
//! call being served, if there is one (`security::gate` sets it for the
//! calls it lets through); a message that does not fit is refused with
//! RESOURCE_EXHAUSTED and never decoded.

use std::{future::Future, marker::PhantomData, sync::Arc};

use prost::{bytes::Buf, Message};
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    Status,
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first buffer of each encode and decode: at or under glibc's
/// per-thread cache limit (1032 bytes), and above most meshkv messages.
pub const BUFFER_BYTES: usize = 1024;

/// How many bytes a stream encodes before yielding (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// What one top-level field is charged as, decoded: about the size of a
/// decoded `Mutation` or `WriteRequest` with its allocations' headers.
pub const DECODED_FIELD_BYTES: usize = 128;

/// Where the decoded cost of a call's messages is charged.
pub trait DecodeCharge: Send + Sync {
    /// Takes `bytes` more; false when they do not fit.
    fn charge(&self, bytes: usize) -> bool;
}

tokio::task_local! {
    static CHARGE: Arc<dyn DecodeCharge>;
}

/// Runs `call` with `charge` as the place its messages' decoded cost goes.
/// Messages decoded outside such a scope (peer answers, a stream a handler
/// reads from another task) are not charged.
pub async fn charged<F: Future>(charge: Arc<dyn DecodeCharge>, call: F) -> F::Output {
    CHARGE.scope(charge, call).await
}

/// Top-level fields of the protobuf message `bytes`, or `None` if it is
/// malformed (prost then says how).
fn top_level_fields(mut bytes: &[u8]) -> Option<usize> {
    use prost::encoding::decode_varint;
    let mut n = 0;
    while !bytes.is_empty() {
        let key = decode_varint(&mut bytes).ok()?;
        let skip = match key & 7 {
            0 => {
                decode_varint(&mut bytes).ok()?;
                0
            }
            1 => 8,
            2 => usize::try_from(decode_varint(&mut bytes).ok()?).ok()?,
            5 => 4,
            _ => return None,
        };
        if skip > bytes.len() {
            return None;
        }
        bytes = &bytes[skip..];
        n += 1;
    }
    Some(n)
}

/// prost's decoder, after charging the message's decoded cost.
#[derive(Debug)]
pub struct ChargedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ChargedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic buffers each message in one contiguous allocation.
        let whole = buf.chunk();
        if whole.len() == buf.remaining() {
            if let Some(fields) = top_level_fields(whole) {
                let cost = fields.saturating_mul(DECODED_FIELD_BYTES);
                let fits = CHARGE.try_with(|c| c.charge(cost)).unwrap_or(true);
                if !fits {
                    return Err(Status::resource_exhausted(format!(
                        "a message of {fields} fields would take about {} MiB decoded, more \
                         than this node has left for requests in flight; retry later",
                        cost >> 20
                    )));
                }
            }
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// A client codec that sends its bytes as the message, schema or not, and
/// ignores the answer's bytes: for tests and fuzzing that play a caller who
/// does not follow the protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl tonic::codec::Encoder for Raw {
    type Item = prost::bytes::Bytes;
    type Error = Status;

    fn encode(
        &mut self,
        item: prost::bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        prost::bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

impl Codec for Raw {
    type Encode = prost::bytes::Bytes;
    type Decode = ();
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// The codec the generated services and clients use.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ChargedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ChargedDecoder(ProstCodec::<T, U>::raw_decoder(settings()))
    }
}

#[cfg(test)]
mod tests {
    use tonic::codec::{Decoder, Encoder};

    use super::*;
    use crate::proto;

    #[test]
    fn both_directions_start_small_and_keep_tonics_yield_threshold() {
        let mut codec = SmallBufferCodec::<proto::WriteRequest, proto::WriteResponse>::default();
        // BufferSettings keeps its fields private; its Debug shows them.
        let default = format!("{:?}", BufferSettings::default());
        assert!(
            default.contains(&format!("yield_threshold: {YIELD_THRESHOLD}")),
            "{default}"
        );
        for s in [
            codec.encoder().buffer_settings(),
            codec.decoder().buffer_settings(),
        ] {
            let s = format!("{s:?}");
            assert!(s.contains(&format!("buffer_size: {BUFFER_BYTES},")), "{s}");
            assert!(
                s.contains(&format!("yield_threshold: {YIELD_THRESHOLD}")),
                "{s}"
            );
        }
    }
}
