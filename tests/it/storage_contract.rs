//! The storage contract: what every backend promises through [`Storage`], written once and run
//! against each of them (a local directory, moto, s3s-fs). It pins:
//! - a streamed write (several parts) and a one-request write read back byte for byte, and
//!   delete makes an object absent (deleting an absent key is no error, on every backend);
//! - no write replaces a stored object: `put_bytes` and `put_stream` on a taken key fail with
//!   `AlreadyExists` naming it and leave the object as it was (the same bytes again count as
//!   written, so a resent request is no error);
//! - listing returns every key once, in byte order, beyond one page of 1,000;
//! - a streamed write whose source fails, or that is cancelled, after more than one part
//!   leaves no object and no unfinished upload (server-side, or temp file on disk);
//! - the sweep of unfinished uploads removes those begun before its cutoff, and only those.
//!
//! Unfinished uploads are looked up behind the storage's back: ListMultipartUploads on moto,
//! s3s-fs's upload files on its disk (it does not implement ListMultipartUploads), and files
//! the storage does not list in the local directory.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use pgsidecar::config::Sources;
use pgsidecar::storage::s3::S3Storage;
use pgsidecar::storage::StorageLocation;
use pgsidecar::storage::{Storage, StorageError, StoredPiece};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::harness::{s3, unique, S3};

const MIB: usize = 1024 * 1024;
/// The smallest part size the configuration allows (S3's minimum): a few MiB make several parts.
const PART_SIZE: &str = "5MiB";

/// Every case, run against every backend: `storage_contract::<backend>::<case>`.
macro_rules! contract {
    ([$($backend:ident),*], $cases:tt) => {
        $( contract!(@backend $backend $cases); )*
    };
    (@backend $backend:ident [$($case:ident),*]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let subject = super::Subject::$backend().await;
                    super::$case(&subject).await;
                }
            )*
        }
    };
}

contract!(
    [local, moto, s3s_fs],
    [
        round_trip,
        never_replaces,
        lists_in_order_beyond_one_page,
        failed_stream_leaves_nothing,
        sweep_removes_only_stale_uploads
    ]
);

/// What the server tells about unfinished uploads, which bounds what the sweep can do there.
#[derive(Debug, Clone, Copy, PartialEq)]
enum UploadListing {
    /// Listed with when they were begun (a local temp file: its last write).
    Dated,
    /// Listed, all with one made-up start: moto 5 answers `2010-11-10T20:48:33.000Z` for
    /// every upload (a constant in its ListMultipartUploads), so there the sweep cannot tell
    /// a running upload from a stale one.
    FixedStart,
    /// Not listed: s3s-fs does not implement ListMultipartUploads (501).
    Unlisted,
}

enum Store {
    Local {
        root: tempfile::TempDir,
    },
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        /// Where s3s-fs keeps objects and unfinished uploads.
        disk: Option<PathBuf>,
    },
}

/// A backend under test: the storage, the store behind it, and the key prefix used.
struct Subject {
    storage: Storage,
    store: Store,
    prefix: String,
    uploads: UploadListing,
}

fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
            aws_sdk_s3::config::Credentials::new("test", "test", None, None, "storage_contract"),
        ))
        .build()
}

/// The storage configuration for `url`, as the binary would load it, with the smallest parts.
fn storage_config(url: &str) -> pgsidecar::storage::StorageConfig {
    let env = [
        ("PGSIDECAR_STORAGE__URL", url),
        ("PGSIDECAR_STORAGE__PART_SIZE", PART_SIZE),
    ];
    pgsidecar::config::load(&Sources {
        file: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .unwrap()
    .storage
}

/// The s3s-fs server of these tests, and its directory.
static S3S_FS: OnceLock<(S3, PathBuf)> = OnceLock::new();

impl Subject {
    async fn local() -> Subject {
        let root = tempfile::tempdir().unwrap();
        let config = storage_config(&format!("file://{}", root.path().display()));
        assert!(matches!(config.location, StorageLocation::Local { .. }));
        Subject {
            storage: Storage::from_config(&config).await,
            store: Store::Local { root },
            prefix: "p/".into(),
            uploads: UploadListing::Dated,
        }
    }

    async fn moto() -> Subject {
        // The harness starts servers with blocking calls.
        let endpoint = tokio::task::spawn_blocking(|| s3().endpoint())
            .await
            .unwrap();
        Subject::s3(&endpoint, None, UploadListing::FixedStart).await
    }

    async fn s3s_fs() -> Subject {
        let (endpoint, disk) = tokio::task::spawn_blocking(|| {
            let (server, disk) = S3S_FS.get_or_init(S3::start_s3s_fs_with_root);
            (server.endpoint(), disk.clone())
        })
        .await
        .unwrap();
        Subject::s3(&endpoint, Some(disk), UploadListing::Unlisted).await
    }

    async fn s3(endpoint: &str, disk: Option<PathBuf>, uploads: UploadListing) -> Subject {
        let sdk = sdk_config(endpoint);
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        );
        let bucket = unique("contract").replace('_', "-");
        client.create_bucket().bucket(&bucket).send().await.unwrap();
        let config = storage_config(&format!("s3://{bucket}/p"));
        Subject {
            storage: Storage::S3(S3Storage::with_sdk_config(&config, &bucket, &sdk)),
            store: Store::S3 {
                client,
                bucket,
                disk,
            },
            prefix: "p/".into(),
            uploads,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self.storage.list(&self.key(prefix)).await.unwrap();
        listed.into_iter().map(|o| o.key).collect()
    }

    /// Unfinished uploads under the prefix, as the store holds them (not as the storage says):
    /// S3 keys of open multipart uploads, or paths of files in the directory that the storage
    /// does not list.
    async fn leftovers(&self) -> Vec<String> {
        match &self.store {
            Store::Local { root } => {
                let listed: BTreeSet<String> = self.keys("").await.into_iter().collect();
                let mut files = Vec::new();
                let mut dirs = vec![root.path().to_path_buf()];
                while let Some(dir) = dirs.pop() {
                    for entry in std::fs::read_dir(&dir).unwrap() {
                        let path = entry.unwrap().path();
                        if path.is_dir() {
                            dirs.push(path);
                        } else {
                            let rel = path.strip_prefix(root.path()).unwrap();
                            files.push(rel.to_string_lossy().into_owned());
                        }
                    }
                }
                files.retain(|f| !listed.contains(f));
                files.sort();
                files
            }
            Store::S3 {
                disk: Some(disk),
                bucket,
                ..
            } => s3s_fs_uploads(disk, bucket, &self.prefix),
            Store::S3 { client, bucket, .. } => {
                let out = client
                    .list_multipart_uploads()
                    .bucket(bucket)
                    .prefix(&self.prefix)
                    .send()
                    .await
                    .unwrap();
                let mut keys: Vec<String> = out
                    .uploads()
                    .iter()
                    .filter_map(|u| u.key().map(str::to_string))
                    .collect();
                keys.sort();
                keys
            }
        }
    }
}

/// Keys of the uploads s3s-fs holds open in `bucket` under `prefix`. It keeps, in its root
/// directory, `.upload-<id>.json` per open upload and the upload's object attributes in
/// `.bucket-<bucket>.object-<key>.upload-<id>.metadata.json` (names in URL-safe base64).
fn s3s_fs_uploads(disk: &std::path::Path, bucket: &str, prefix: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mark = format!(".bucket-{}.object-", b64.encode(bucket));
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(disk).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&mark) else {
            continue;
        };
        let Some((key, id)) = rest
            .strip_suffix(".metadata.json")
            .and_then(|r| r.split_once(".upload-"))
        else {
            continue;
        };
        if disk.join(format!(".upload-{id}.json")).exists() {
            let key = String::from_utf8(b64.decode(key).unwrap()).unwrap();
            if key.starts_with(prefix) {
                keys.push(key);
            }
        }
    }
    keys.sort();
    keys
}

/// `len` bytes that differ from position to position, so a part stored twice, dropped or out
/// of order shows.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn read_all(storage: &Storage, key: &str) -> Vec<u8> {
    let mut body = storage.get(key).await.unwrap();
    let mut out = Vec::new();
    body.read_to_end(&mut out).await.unwrap();
    out
}

async fn put_stream(
    storage: &Storage,
    key: &str,
    data: &[u8],
) -> Result<Vec<StoredPiece>, StorageError> {
    let mut body = data;
    storage
        .put_stream(key, &mut body, data.len() as u64, &CancellationToken::new())
        .await
}

/// A `NotFound` that names `key` (a local directory names the file's path, which ends with it).
fn assert_not_found<T>(result: Result<T, StorageError>, key: &str) {
    match result {
        Err(StorageError::NotFound { key: named }) => {
            assert!(named.ends_with(key), "`{named}` does not name `{key}`")
        }
        Err(e) => panic!("reading `{key}`: expected not found, got: {e}"),
        Ok(_) => panic!("`{key}` is still there"),
    }
}

/// An `AlreadyExists` for exactly `key`, whose message names it.
fn assert_already_exists<T: std::fmt::Debug>(result: Result<T, StorageError>, key: &str) {
    match result {
        Err(e @ StorageError::AlreadyExists { .. }) => {
            assert!(
                matches!(&e, StorageError::AlreadyExists { key: named } if named == key),
                "{e:?}"
            );
            assert!(e.to_string().contains(key), "{e}");
        }
        other => panic!("writing over `{key}`: expected already exists, got {other:?}"),
    }
}

/// Case 1: a streamed write of several parts, an empty stream and a one-request write read
/// back byte for byte; listed with their sizes; delete makes each absent; deleting an absent
/// key succeeds.
async fn round_trip(s: &Subject) {
    let dump = s.key("rt/2026-01-01T000000Z.dump.zst");
    let empty = s.key("rt/2026-01-01T000000Z.globals.sql.zst");
    let manifest = s.key("rt/2026-01-01T000000Z.manifest.json");
    // Two full parts and a short one.
    let big = pattern(2 * 5 * MIB + 4321, 1);
    let small = br#"{"key":"manifest"}"#.to_vec();

    let pieces = put_stream(&s.storage, &dump, &big).await.unwrap();
    assert_eq!(
        pieces,
        [StoredPiece {
            key: dump.clone(),
            size: big.len() as u64
        }]
    );
    let pieces = put_stream(&s.storage, &empty, &[]).await.unwrap();
    assert_eq!(
        pieces,
        [StoredPiece {
            key: empty.clone(),
            size: 0
        }]
    );
    s.storage
        .put_bytes(&manifest, Bytes::from(small.clone()))
        .await
        .unwrap();

    assert!(read_all(&s.storage, &dump).await == big, "`{dump}` differs");
    assert_eq!(s.storage.get_bytes(&dump).await.unwrap().len(), big.len());
    assert_eq!(read_all(&s.storage, &empty).await, b"");
    assert_eq!(s.storage.get_bytes(&manifest).await.unwrap(), small);
    assert_eq!(read_all(&s.storage, &manifest).await, small);

    let listed: Vec<(String, u64)> = s
        .storage
        .list(&s.key("rt/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(
        listed,
        [
            (dump.clone(), big.len() as u64),
            (empty.clone(), 0),
            (manifest.clone(), small.len() as u64),
        ]
    );

    for key in [&dump, &empty, &manifest] {
        s.storage.delete(key).await.unwrap();
        assert_not_found(s.storage.get(key).await, key);
        assert_not_found(s.storage.get_bytes(key).await, key);
        // Deleting it again, or a key never written, is no error.
        s.storage.delete(key).await.unwrap();
    }
    s.storage
        .delete(&s.key("rt/never-written.dump.zst"))
        .await
        .unwrap();
    assert_eq!(s.keys("rt/").await, Vec::<String>::new());
    assert_eq!(s.leftovers().await, Vec::<String>::new());
}

/// Case 2: no write replaces a stored object, whichever way either was written; the same bytes
/// again count as written.
async fn never_replaces(s: &Subject) {
    let manifest = s.key("ow/2026-01-01T000000Z.manifest.json");
    s.storage
        .put_bytes(&manifest, Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_already_exists(
        s.storage
            .put_bytes(&manifest, Bytes::from_static(b"second"))
            .await,
        &manifest,
    );
    assert_eq!(s.storage.get_bytes(&manifest).await.unwrap(), "first");
    // What a resent request whose first attempt landed finds.
    s.storage
        .put_bytes(&manifest, Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_already_exists(
        put_stream(&s.storage, &manifest, b"streamed").await,
        &manifest,
    );
    assert_eq!(s.storage.get_bytes(&manifest).await.unwrap(), "first");

    let dump = s.key("ow/2026-01-01T000000Z.dump.zst");
    let stored = pattern(5 * MIB + 1, 2);
    put_stream(&s.storage, &dump, &stored).await.unwrap();
    assert_already_exists(
        s.storage
            .put_bytes(&dump, Bytes::from_static(b"small"))
            .await,
        &dump,
    );
    // Over more than one part: the refusal comes when the upload completes.
    assert_already_exists(
        put_stream(&s.storage, &dump, &pattern(2 * 5 * MIB + 7, 3)).await,
        &dump,
    );
    // Not even the same bytes: a stream cannot be compared before it is consumed.
    assert_already_exists(put_stream(&s.storage, &dump, &stored).await, &dump);
    assert!(
        read_all(&s.storage, &dump).await == stored,
        "`{dump}` changed"
    );

    assert_eq!(s.keys("ow/").await, [dump, manifest]);
    assert_eq!(s.leftovers().await, Vec::<String>::new());
}

/// Case 3: listing returns every key under the prefix exactly once, in byte order, past the
/// 1,000 keys of one S3 page; and a prefix is a string prefix, not a directory.
async fn lists_in_order_beyond_one_page(s: &Subject) {
    const MANY: usize = 1_100;
    // Written in an order unlike the listed one (i * 7 mod MANY visits each number once).
    let mut many: Vec<String> = (0..MANY)
        .map(|i| s.key(&format!("many/{:04}.json", i * 7 % MANY)))
        .collect();
    // Names whose byte order differs from a naive or locale order: `-` < `.` < `/` < digits <
    // upper case < `_` < lower case < `~` < non-ASCII, and `10` < `9`.
    let odd = [
        "ord/-", "ord/10", "ord/9", "ord/A", "ord/Z", "ord/a-b", "ord/a.b", "ord/a/b", "ord/a_b",
        "ord/b", "ord/~", "ord/é",
    ];
    let odd: Vec<String> = odd.iter().map(|n| s.key(n)).collect();
    let mut all = many.clone();
    all.extend(odd.iter().rev().cloned());
    futures::stream::iter(all.iter())
        .map(|key| s.storage.put_bytes(key, Bytes::from(key.clone())))
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();

    let listed = s.storage.list(&s.key("many/")).await.unwrap();
    many.sort();
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys.len(), MANY, "each key once");
    assert!(keys == many, "not every key, or not in order");
    assert!(listed.iter().all(|o| o.size == o.key.len() as u64));

    assert_eq!(s.keys("ord/").await, odd);
    let tens: Vec<String> = (1000..MANY)
        .map(|i| s.key(&format!("many/{i}.json")))
        .collect();
    assert_eq!(s.keys("many/10").await, tens);
    assert_eq!(s.keys("none/").await, Vec::<String>::new());
}

/// A body that yields `len` bytes in small reads, then fails (or, with `fail: false`, never
/// ends); `read` counts the bytes taken so far.
struct Source {
    data: Vec<u8>,
    pos: usize,
    fail: bool,
    read: Arc<AtomicUsize>,
}

impl Source {
    fn new(len: usize, seed: u64, fail: bool) -> Source {
        Source {
            data: pattern(len, seed),
            pos: 0,
            fail,
            read: Arc::default(),
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            if self.fail {
                return Poll::Ready(Err(std::io::Error::other("the dump died mid-way")));
            }
            // Never woken: the stream stalls, as a hung pg_dump would.
            return Poll::Pending;
        }
        let n = rest.len().min(buf.remaining()).min(64 * 1024);
        buf.put_slice(&rest[..n]);
        self.pos += n;
        self.read.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

/// Case 4: a streamed write whose source fails after more than one part, or that is cancelled
/// after more than one part, leaves no object and no unfinished upload.
async fn failed_stream_leaves_nothing(s: &Subject) {
    let key = s.key("fail/2026-01-01T000000Z.dump.zst");
    let mut body = Source::new(2 * 5 * MIB + 100, 4, true);
    let failed = s
        .storage
        .put_stream(&key, &mut body, 0, &CancellationToken::new())
        .await;
    match failed {
        Err(StorageError::Source { key: named, source }) => {
            assert_eq!(named, key);
            assert_eq!(source.to_string(), "the dump died mid-way");
        }
        other => panic!("expected the source's failure for `{key}`, got {other:?}"),
    }
    assert_not_found(s.storage.get_bytes(&key).await, &key);
    assert_eq!(s.keys("fail/").await, Vec::<String>::new());
    assert_eq!(s.leftovers().await, Vec::<String>::new());

    let len = 2 * 5 * MIB + 100;
    let mut body = Source::new(len, 5, false);
    let read = body.read.clone();
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        // Once the stream stalls, both full parts have been read and handed on.
        let stalled = async {
            while read.load(Ordering::SeqCst) < len {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), stalled).await;
        canceller.cancel();
    });
    let cancelled = s.storage.put_stream(&key, &mut body, 0, &cancel).await;
    assert!(
        matches!(cancelled, Err(StorageError::Cancelled)),
        "{cancelled:?}"
    );
    assert_eq!(body.pos, len, "cancelled before the stream stalled");
    assert_not_found(s.storage.get_bytes(&key).await, &key);
    assert_eq!(s.keys("fail/").await, Vec::<String>::new());
    assert_eq!(s.leftovers().await, Vec::<String>::new());
}

/// Leaves an unfinished upload of `key`, as a crash does: the upload is dropped mid-stream,
/// with no chance to clean up.
async fn leave_unfinished(s: &Subject, key: &str) {
    let before = s.leftovers().await.len();
    let mut body = Source::new(5 * MIB + 100, 6, false);
    let cancel = CancellationToken::new();
    let upload = s.storage.put_stream(key, &mut body, 0, &cancel);
    let appeared = async {
        while s.leftovers().await.len() == before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        r = upload => panic!("the upload of `{key}` ended: {r:?}"),
        _ = tokio::time::timeout(Duration::from_secs(30), appeared) => {}
    }
    assert_eq!(
        s.leftovers().await.len(),
        before + 1,
        "no upload of `{key}` left"
    );
}

/// Case 5: the sweep removes unfinished uploads begun before its cutoff, leaves those begun
/// after it and every stored object, and with no cutoff removes them all.
async fn sweep_removes_only_stale_uploads(s: &Subject) {
    let stored = s.key("sweep/2026-01-01T000000Z.dump.zst");
    put_stream(&s.storage, &stored, b"a complete backup")
        .await
        .unwrap();
    leave_unfinished(s, &s.key("sweep/2026-01-02T000000Z.dump.zst")).await;
    // Start times and file times may have whole-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    leave_unfinished(s, &s.key("sweep/2026-01-03T000000Z.dump.zst")).await;
    let both = s.leftovers().await;
    assert_eq!(both.len(), 2, "{both:?}");

    let prefix = s.key("sweep/");
    let sweep = |cutoff: Option<DateTime<Utc>>| {
        let prefix = prefix.clone();
        async move {
            s.storage
                .abort_stale_uploads(&prefix, cutoff)
                .await
                .unwrap()
        }
    };
    // Begun after a cutoff long past, every upload is one that may still be running.
    let long_ago = DateTime::parse_from_rfc3339("2001-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(sweep(Some(long_ago)).await, 0);
    assert_eq!(s.leftovers().await, both);
    match s.uploads {
        UploadListing::Dated => {
            assert_eq!(sweep(Some(cutoff)).await, 1);
            let left = s.leftovers().await;
            assert_eq!(left.len(), 1, "{left:?}");
            assert!(left[0].contains("2026-01-03T000000Z"), "{left:?}");
            assert_eq!(sweep(None).await, 1);
        }
        UploadListing::FixedStart => {
            // Both look begun in 2010: the one begun after the cutoff goes too.
            assert_eq!(sweep(Some(cutoff)).await, 2);
        }
        UploadListing::Unlisted => {
            // The storage cannot find them; it says so in a warning and carries on.
            assert!(
                matches!(
                    s.storage.pending_uploads(&prefix).await,
                    Err(StorageError::Unsupported { .. })
                ),
                "the server lists uploads after all: make this backend `Dated`"
            );
            assert_eq!(sweep(None).await, 0);
            assert_eq!(s.leftovers().await, both);
            return;
        }
    }
    assert_eq!(s.leftovers().await, Vec::<String>::new());
    assert_eq!(s.keys("sweep/").await, [stored]);
}
