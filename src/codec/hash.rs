//! Transforms: counting and hashing. The sha256 of a backup is over its bytes as stored
//! (compressed, and encrypted when it is), so it can be checked without any key; every
//! sha256 in pgsidecar is computed here.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A running sha256 over bytes fed to it piece by piece.
#[derive(Default)]
pub struct Sha256Hex(Sha256);

impl Sha256Hex {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Lower-case hex of everything added.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
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
    hasher: Sha256Hex,
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
            hasher: Sha256Hex::default(),
            bytes: 0,
        }
    }

    /// The digest of everything read so far; call after EOF.
    pub fn finish(self) -> StreamDigest {
        StreamDigest {
            sha256: self.hasher.finish(),
            bytes: self.bytes,
        }
    }
}

/// Where the digest of a [`Tapped`] stream appears once it was read to its end.
pub type DigestSlot = Arc<std::sync::Mutex<Option<StreamDigest>>>;

/// [`Hashed`] for a stream handed on to a consumer that keeps it: the digest appears in the
/// slot [`Tapped::new`] returns when the stream reaches its end (and never before).
pub struct Tapped<R> {
    inner: Option<Hashed<R>>,
    slot: DigestSlot,
}

impl<R> Tapped<R> {
    pub fn new(inner: R) -> (Self, DigestSlot) {
        let slot = DigestSlot::default();
        (
            Tapped {
                inner: Some(Hashed::new(inner)),
                slot: slot.clone(),
            },
            slot,
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Tapped<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        ready!(Pin::new(&mut *inner).poll_read(cx, buf))?;
        if buf.filled().len() == before && buf.remaining() > 0 {
            let digest = self.inner.take().expect("present").finish();
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
        }
        Poll::Ready(Ok(()))
    }
}

/// A stream that must match a digest it is known by: at its end it fails with
/// [`io::ErrorKind::InvalidData`] instead of ending when its sha256 or length differ, so a
/// consumer that completes only at a clean end (an upload) never completes with wrong bytes.
pub struct Checked<R> {
    inner: Tapped<R>,
    slot: DigestSlot,
    expected: StreamDigest,
    what: String,
}

impl<R> Checked<R> {
    /// `inner`, which must hash to `expected`; `what` names it in the error.
    pub fn new(inner: R, expected: StreamDigest, what: impl Into<String>) -> Self {
        let (inner, slot) = Tapped::new(inner);
        Checked {
            inner,
            slot,
            expected,
            what: what.into(),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Checked<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let got = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        match got {
            Some(got) if got != self.expected => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} does not match its manifest: sha256 {} over {} bytes, the manifest says {} over {} bytes",
                    self.what, got.sha256, got.bytes, self.expected.sha256, self.expected.bytes
                ),
            ))),
            _ => Poll::Ready(Ok(())),
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
