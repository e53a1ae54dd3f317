//! Transforms between the dump source and the storage sink: compression, and the counting and
//! hashing of what is stored (encryption, between the two, is [`crate::codec::encryption`]). Each is a
//! plain `AsyncRead` wrapper, so the pipeline is one stream that storage pulls from at its own
//! pace (backpressure reaches pg_dump's pipe). Stages that run on a thread of their own share
//! [`read_chunks`] and [`reader_from`].
//!
//! zstd compresses on a thread of its own, in independent frames of [`ZSTD_CHUNK`] bytes, while
//! the stream goes on reading pg_dump's pipe: like `pg_dump | zstd`, dumping and compressing
//! run in parallel. (Streaming zstd inline on the reading task measured 50% slower: the
//! reading stalled during compression, and zstd's ring-buffer streaming mode takes its slower
//! external-dictionary path; one-shot frames take the fast one.) Concatenated frames are one
//! valid zstd stream for every decoder.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Poll};

use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder, ZstdDecoder};
use async_compression::Level;
use tokio::io::{AsyncRead, BufReader};

use crate::codec::Compression;

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

/// Undoes [`compress`]: every frame or member of `input` in turn (chunked zstd writes many).
pub fn decompress(input: impl AsyncRead + Send + 'static, compression: Compression) -> BoxRead {
    match compression {
        Compression::Zstd { .. } => {
            let mut d = ZstdDecoder::new(BufReader::with_capacity(READ_BUFFER, input));
            d.multiple_members(true);
            Box::pin(d)
        }
        Compression::Gzip { .. } => {
            let mut d = GzipDecoder::new(BufReader::with_capacity(READ_BUFFER, input));
            d.multiple_members(true);
            Box::pin(d)
        }
        Compression::None => Box::pin(input),
    }
}

/// A chunk of a stage's input or output, or the error that ended it.
pub(crate) type Chunk = io::Result<bytes::Bytes>;

/// zstd in independent frames, compressed on a blocking thread while the next chunk is read.
/// At most two raw chunks and three compressed ones exist at a time.
fn chunked_zstd(
    input: impl AsyncRead + Send + Unpin + 'static,
    level: i32,
) -> impl AsyncRead + Send {
    let mut raw_rx = read_chunks(input, ZSTD_CHUNK);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Chunk>(1);
    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
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
            let last = !matches!(&chunk, Ok(raw) if raw.len() == ZSTD_CHUNK);
            let frame = chunk.and_then(|raw| {
                if raw.is_empty() {
                    Ok(bytes::Bytes::new())
                } else {
                    compressor.compress(&raw).map(bytes::Bytes::from)
                }
            });
            let failed = frame.is_err();
            if out_tx.blocking_send(frame).is_err() || failed {
                return;
            }
            if last {
                done.store(true, Ordering::Release);
                return;
            }
        }
    });
    reader_from(out_rx, finished)
}

/// Reads `input` on a task of its own into a channel of chunks of `size` bytes, so that the
/// stage consuming them (on a blocking thread) overlaps with the reading. The last chunk is
/// shorter than `size` (possibly empty), or is the error that ended the input; a channel that
/// closes after a full chunk means the reading stopped abnormally. At most two chunks exist at
/// a time: one in the channel, one being filled.
pub(crate) fn read_chunks(
    mut input: impl AsyncRead + Send + Unpin + 'static,
    size: usize,
) -> tokio::sync::mpsc::Receiver<Chunk> {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
    tokio::spawn(async move {
        loop {
            // Reserve the slot before reading: at most two chunks exist (one being consumed,
            // one being filled), and reading still overlaps the consumer's work.
            let Ok(slot) = tx.reserve().await else {
                // The consumer is gone (failure or cancellation): dropping the source ends pg_dump.
                return;
            };
            let mut buf = bytes::BytesMut::with_capacity(size);
            let chunk = loop {
                // A read can wait long (pg_dump blocked on a lock); stop as soon as the
                // consumer is gone, so the source (and pg_dump with it) is dropped at once.
                let read = tokio::select! {
                    r = input.read_buf(&mut buf) => r,
                    _ = tx.closed() => return,
                };
                match read {
                    Ok(0) => break Ok(buf.freeze()),
                    Ok(_) if buf.len() == size => break Ok(buf.freeze()),
                    Ok(_) => {}
                    Err(e) => break Err(e),
                }
            };
            let last = !matches!(&chunk, Ok(b) if b.len() == size);
            slot.send(chunk);
            if last {
                return;
            }
        }
    });
    rx
}

/// The output channel of a stage running on a blocking thread, as a stream. The stage sets
/// `finished` once it has sent its last chunk; a channel that closes without it (the thread
/// panicked) ends the stream with an error, never with a clean end: reaching the end of the
/// stream must mean the stage completed.
pub(crate) fn reader_from(
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
    finished: Arc<AtomicBool>,
) -> impl AsyncRead + Send {
    let mut ended = false;
    let stream = futures::stream::poll_fn(move |cx| {
        if ended {
            return Poll::Ready(None);
        }
        match ready!(rx.poll_recv(cx)) {
            Some(Ok(bytes)) => Poll::Ready(Some(Ok(bytes))),
            Some(Err(e)) => {
                // The error is the end: what follows it (the closing channel) says nothing more.
                ended = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                ended = true;
                if finished.load(Ordering::Acquire) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(io::Error::other(
                        "a stream stage stopped before the end of its input",
                    ))))
                }
            }
        }
    });
    tokio_util::io::StreamReader::new(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::hash::{Counted, Hashed};
    use sha2::{Digest, Sha256};
    use std::task::Context;
    use tokio::io::AsyncReadExt;
    use tokio::io::ReadBuf;

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
        // An input of whole chunks ends with an empty one.
        for len in [ZSTD_CHUNK * 5 + ZSTD_CHUNK / 2, ZSTD_CHUNK * 2] {
            let data: Vec<u8> = (0..len as u64).map(|i| (i * 7 % 253) as u8).collect();
            let mut out = Vec::new();
            compress(
                std::io::Cursor::new(data.clone()),
                Compression::Zstd { level: 1 },
            )
            .read_to_end(&mut out)
            .await
            .unwrap();
            assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), data, "{len}");
        }
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

    #[tokio::test]
    async fn a_stage_that_stops_without_finishing_is_an_error_not_an_end() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
        tx.send(Ok(bytes::Bytes::from_static(b"partial")))
            .await
            .unwrap();
        drop(tx);
        let mut out = Vec::new();
        let err = Box::pin(reader_from(rx, Arc::default()))
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("stopped before the end"), "{err}");
        assert_eq!(out, b"partial");

        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
        tx.send(Ok(bytes::Bytes::from_static(b"whole")))
            .await
            .unwrap();
        drop(tx);
        let mut out = Vec::new();
        Box::pin(reader_from(rx, Arc::new(AtomicBool::new(true))))
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"whole");
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
