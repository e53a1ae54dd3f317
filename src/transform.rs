//! Transforms between the dump source and the storage sink: compression, and the counting and
//! hashing of what is stored. Each is a plain `AsyncRead` wrapper, so the pipeline is one
//! stream that storage pulls from at its own pace (backpressure reaches pg_dump's pipe).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_compression::tokio::bufread::{GzipEncoder, ZstdEncoder};
use async_compression::Level;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

use crate::config::Compression;

/// A boxed stream stage.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;

/// Buffer between pg_dump's pipe and the compressor: large reads keep syscalls cheap.
const READ_BUFFER: usize = 256 * 1024;

/// Compresses `input` as configured. zstd frames carry a content checksum, so a restore
/// detects corruption even without the manifest.
pub fn compress(input: impl AsyncRead + Send + 'static, compression: Compression) -> BoxRead {
    let buffered = BufReader::with_capacity(READ_BUFFER, input);
    match compression {
        Compression::Zstd { level } => Box::pin(ZstdEncoder::with_quality_and_params(
            buffered,
            Level::Precise(level),
            &[async_compression::zstd::CParameter::checksum_flag(true)],
        )),
        Compression::Gzip { level } => {
            Box::pin(GzipEncoder::with_quality(buffered, Level::Precise(level)))
        }
        Compression::None => Box::pin(buffered),
    }
}

/// Counts bytes read through it into a shared counter, readable while the stream runs.
pub struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> Counted<R> {
    /// Wraps `inner`; the returned counter grows as bytes pass.
    pub fn new(inner: R) -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            Counted {
                inner,
                count: count.clone(),
            },
            count,
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        self.count.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

/// Computes the sha256 and length of the bytes read through it: the stored object's identity,
/// recorded in the manifest and checked again at restore.
pub struct Hashed<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

/// The identity of a stored stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDigest {
    /// Lower-case hex sha256.
    pub sha256: String,
    pub bytes: u64,
}

impl<R> Hashed<R> {
    pub fn new(inner: R) -> Self {
        Hashed {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The digest of everything read so far; call after EOF.
    pub fn finish(self) -> StreamDigest {
        StreamDigest {
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        self.bytes += fresh.len() as u64;
        self.hasher.update(fresh);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn zstd_round_trip_counts_and_hashes() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (counted, raw) = Counted::new(std::io::Cursor::new(data.clone()));
        let mut hashed = Hashed::new(compress(counted, Compression::Zstd { level: 3 }));
        let mut stored = Vec::new();
        hashed.read_to_end(&mut stored).await.unwrap();
        let digest = hashed.finish();
        assert_eq!(raw.load(Ordering::Relaxed), data.len() as u64);
        assert_eq!(digest.bytes, stored.len() as u64);
        assert_eq!(digest.sha256, hex::encode(Sha256::digest(&stored)));
        assert_eq!(zstd_decode(&stored).await, data);
    }

    async fn zstd_decode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        async_compression::tokio::bufread::ZstdDecoder::new(data)
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }
}
