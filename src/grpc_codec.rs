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

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first buffer of each encode and decode: at or under glibc's
/// per-thread cache limit (1032 bytes), and above most meshkv messages.
pub const BUFFER_BYTES: usize = 1024;

/// How many bytes a stream encodes before yielding (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

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
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
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
