//! Transforms between the dump source and the storage sink: compression, and the counting and
//! hashing of what is stored. Each is a plain `AsyncRead` wrapper, so the pipeline is one
//! stream that storage pulls from at its own pace (backpressure reaches pg_dump's pipe).
//!
//! zstd compresses on a thread of its own, in independent frames of [`ZSTD_CHUNK`] bytes, while
//! the stream goes on reading pg_dump's pipe: like `pg_dump | zstd`, dumping and compressing
//! run in parallel. (Streaming zstd inline on the reading task measured 50% slower: the
//! reading stalled during compression, and zstd's ring-buffer streaming mode takes its slower
//! external-dictionary path; one-shot frames take the fast one.) Concatenated frames are one
//! valid zstd stream for every decoder.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_compression::tokio::bufread::GzipEncoder;
use async_compression::Level;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

use crate::config::Compression;

/// A boxed stream stage.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;

/// Buffer between pg_dump's pipe and the compressor: large reads keep syscalls cheap.
const READ_BUFFER: usize = 256 * 1024;

/// Raw bytes per zstd frame: zstd's window at level 3, so independent frames lose almost no
/// matches. Measured on the 1 GiB benchmark database: 2 MiB frames came out 0.1% smaller than
/// 4 MiB ones (zstd tunes itself to a known input size) and used 14 MiB less memory.
pub const ZSTD_CHUNK: usize = 2 * 1024 * 1024;

/// Compresses `input` as configured. zstd frames carry a content checksum, so a restore
/// detects corruption even without the manifest.
pub fn compress(input: impl AsyncRead + Send + 'static, compression: Compression) -> BoxRead {
    match compression {
        Compression::Zstd { level } => Box::pin(chunked_zstd(Box::pin(input), level)),
        Compression::Gzip { level } => Box::pin(GzipEncoder::with_quality(
            BufReader::with_capacity(READ_BUFFER, input),
            Level::Precise(level),
        )),
        Compression::None => Box::pin(BufReader::with_capacity(READ_BUFFER, input)),
    }
}

/// A raw chunk, or the error that ended the input.
type Chunk = io::Result<bytes::Bytes>;

/// zstd in independent frames, compressed on a blocking thread while the next chunk is read.
/// At most two raw chunks and three compressed ones exist at a time.
fn chunked_zstd(
    mut input: impl AsyncRead + Send + Unpin + 'static,
    level: i32,
) -> impl AsyncRead + Send {
    use tokio::io::AsyncReadExt;
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel::<Chunk>(1);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Chunk>(1);
    tokio::spawn(async move {
        loop {
            // Reserve the slot before reading: at most two raw chunks exist (one being
            // compressed, one being filled), and reading still overlaps compression.
            let Ok(slot) = raw_tx.reserve().await else {
                // The consumer is gone (failure or cancellation): dropping the source ends pg_dump.
                return;
            };
            let mut buf = bytes::BytesMut::with_capacity(ZSTD_CHUNK);
            let chunk = loop {
                // A read can wait long (pg_dump blocked on a lock); stop as soon as the
                // consumer is gone, so the source (and pg_dump with it) is dropped at once.
                let read = tokio::select! {
                    r = input.read_buf(&mut buf) => r,
                    _ = raw_tx.closed() => return,
                };
                match read {
                    Ok(0) => break Ok(buf.freeze()),
                    Ok(_) if buf.len() == ZSTD_CHUNK => break Ok(buf.freeze()),
                    Ok(_) => {}
                    Err(e) => break Err(e),
                }
            };
            let last = !matches!(&chunk, Ok(b) if b.len() == ZSTD_CHUNK);
            slot.send(chunk);
            if last {
                return;
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        let mut compressor = match zstd::bulk::Compressor::new(level).and_then(|mut c| {
            c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                let _ = out_tx.blocking_send(Err(e));
                return;
            }
        };
        while let Some(chunk) = raw_rx.blocking_recv() {
            let frame = chunk.and_then(|raw| {
                if raw.is_empty() {
                    Ok(bytes::Bytes::new())
                } else {
                    compressor.compress(&raw).map(bytes::Bytes::from)
                }
            });
            if out_tx.blocking_send(frame).is_err() {
                return;
            }
        }
    });
    tokio_util::io::StreamReader::new(tokio_stream_from(out_rx))
}

/// The receiving end of a channel as a stream, for `StreamReader`.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
) -> impl futures::Stream<Item = Chunk> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
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

    #[tokio::test]
    async fn zstd_frames_span_many_chunks_and_decode_as_one_stream() {
        let data: Vec<u8> = (0..(ZSTD_CHUNK as u64 * 5 / 2))
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let mut out = Vec::new();
        compress(
            std::io::Cursor::new(data.clone()),
            Compression::Zstd { level: 1 },
        )
        .read_to_end(&mut out)
        .await
        .unwrap();
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), data);
    }

    #[tokio::test]
    async fn a_source_error_reaches_the_reader() {
        struct Failing;
        impl AsyncRead for Failing {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::Error::other("boom")))
            }
        }
        let mut out = Vec::new();
        let err = compress(Failing, Compression::Zstd { level: 3 })
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
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
