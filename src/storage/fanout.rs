//! Storage sink: one stream read once and handed to several destinations at once.
//!
//! Invariants: every reader sees the same bytes in the same order; memory is bounded by
//! `depth` chunks per reader, so the slowest live reader sets the pace (it never buffers
//! without limit); a reader that is dropped (its upload failed) is left behind and the others
//! go on; an error of the source reaches every reader, so no destination completes an upload
//! of a stream that failed.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Bytes read from the source at a time (and the unit of buffering).
pub const CHUNK: usize = 256 * 1024;
/// Chunks buffered per reader: enough to keep an upload's part buffer filling while another
/// reader is briefly slower.
pub const DEPTH: usize = 8;

type Item = Result<Bytes, Arc<io::Error>>;

/// One destination's view of the shared stream.
pub type FanReader = tokio_util::io::StreamReader<ChunkStream, Bytes>;

/// The chunks of one reader, as a stream.
pub struct ChunkStream(mpsc::Receiver<Item>);

impl Stream for ChunkStream {
    type Item = io::Result<Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|item| {
            item.map(|r| {
                r.map_err(|e| io::Error::new(e.kind(), format!("the backup stream failed: {e}")))
            })
        })
    }
}

/// How the pump ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// The source reached its end and every live reader got all of it.
    Complete,
    /// Every reader was dropped before the end; the rest of the source was not read.
    Abandoned,
}

/// `n` readers of `source` and the pump that feeds them. Run the pump beside the readers'
/// consumers; it returns the source's own error (not a copy) when reading it failed.
pub fn fan_out<'a, R>(
    mut source: R,
    n: usize,
) -> (
    Vec<FanReader>,
    impl std::future::Future<Output = io::Result<Pumped>> + 'a,
)
where
    R: AsyncRead + Unpin + Send + 'a,
{
    let (senders, readers): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| {
            let (tx, rx) = mpsc::channel::<Item>(DEPTH);
            (tx, tokio_util::io::StreamReader::new(ChunkStream(rx)))
        })
        .unzip();
    let pump = async move {
        let mut live: Vec<mpsc::Sender<Item>> = senders;
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let read = loop {
                match source.read_buf(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(_) if buf.len() < CHUNK => continue,
                    Ok(_) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            match read {
                Err(e) => {
                    let shared = Arc::new(io::Error::new(e.kind(), e.to_string()));
                    for tx in &live {
                        let _ = tx.send(Err(shared.clone())).await;
                    }
                    return Err(e);
                }
                Ok(()) if buf.is_empty() => return Ok(Pumped::Complete),
                Ok(()) => {
                    let chunk = buf.freeze();
                    let mut kept = Vec::with_capacity(live.len());
                    for tx in live {
                        // A send fails only when that reader is gone: its upload gave up.
                        if tx.send(Ok(chunk.clone())).await.is_ok() {
                            kept.push(tx);
                        }
                    }
                    live = kept;
                    if live.is_empty() {
                        return Ok(Pumped::Abandoned);
                    }
                }
            }
        }
    };
    (readers, pump)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn every_reader_gets_every_byte() {
        let bytes = data(3 * CHUNK + 17);
        let (readers, pump) = fan_out(&bytes[..], 3);
        let reads = readers.into_iter().map(|mut r| async move {
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.map(|_| out)
        });
        let (pumped, outs) = tokio::join!(pump, futures::future::join_all(reads));
        assert_eq!(pumped.unwrap(), Pumped::Complete);
        for out in outs {
            assert_eq!(out.unwrap(), bytes);
        }
    }

    #[tokio::test]
    async fn a_dropped_reader_leaves_the_others_going() {
        let bytes = data(40 * CHUNK);
        let (mut readers, pump) = fan_out(&bytes[..], 2);
        let mut kept = readers.pop().unwrap();
        let mut quitter = readers.pop().unwrap();
        let quit = async move {
            let mut first = vec![0u8; 10];
            quitter.read_exact(&mut first).await.unwrap();
        };
        let read = async move {
            let mut out = Vec::new();
            kept.read_to_end(&mut out).await.map(|_| out)
        };
        let (pumped, _, out) = tokio::join!(pump, quit, read);
        assert_eq!(pumped.unwrap(), Pumped::Complete);
        assert_eq!(out.unwrap(), bytes);
    }

    #[tokio::test]
    async fn all_readers_gone_stops_reading_the_source() {
        let bytes = data(100 * CHUNK);
        let (readers, pump) = fan_out(&bytes[..], 2);
        drop(readers);
        assert_eq!(pump.await.unwrap(), Pumped::Abandoned);
    }

    /// A source that fails after some bytes: every reader ends in an error, and the pump
    /// returns the source's own error.
    #[tokio::test]
    async fn a_source_error_reaches_every_reader() {
        let head = data(CHUNK + 5);
        let failing = (&head[..]).chain(FailingRead);
        let (readers, pump) = fan_out(failing, 2);
        let reads = readers.into_iter().map(|mut r| async move {
            let mut out = Vec::new();
            r.read_to_end(&mut out).await
        });
        let (pumped, outs) = tokio::join!(pump, futures::future::join_all(reads));
        assert_eq!(
            pumped.unwrap_err().to_string(),
            "pg_dump exited with status 1"
        );
        for out in outs {
            let e = out.unwrap_err();
            assert!(
                e.to_string().contains("pg_dump exited with status 1"),
                "{e}"
            );
        }
    }

    /// A reader that does not read holds the source back after `DEPTH` chunks: memory is
    /// bounded by the slowest reader, not by the stream's length.
    #[tokio::test]
    async fn a_slow_reader_holds_the_source_back() {
        let bytes = data(100 * CHUNK);
        let (counted, count) = crate::codec::hash::Counted::new(&bytes[..]);
        let (mut readers, pump) = fan_out(counted, 2);
        let _stalled = readers.pop().unwrap();
        let mut fast = readers.pop().unwrap();
        let drain = async move {
            let mut sink = Vec::new();
            let _ = fast.read_to_end(&mut sink).await;
        };
        let watched = async {
            tokio::select! {
                _ = pump => panic!("the pump finished while a reader stalled"),
                _ = drain => unreachable!("the fast reader cannot end before the pump"),
                _ = tokio::time::sleep(std::time::Duration::from_millis(300)) => {}
            }
        };
        watched.await;
        let read = count.load(std::sync::atomic::Ordering::Relaxed) as usize;
        assert!(
            read <= (DEPTH + 2) * CHUNK,
            "read {read} bytes ahead of the stalled reader"
        );
    }

    struct FailingRead;
    impl AsyncRead for FailingRead {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::Error::other("pg_dump exited with status 1")))
        }
    }
}
