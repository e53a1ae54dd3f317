//! Storage stage, S3 streamed multipart uploads: parts in flight, abort, the stale-upload
//! sweep. Invariants kept: memory is bounded (at most `parts_in_flight + 1` part buffers,
//! whatever the database size); all parts but the last have the same size; an upload completes
//! only after clean EOF and is aborted explicitly on every other path; a completion without an
//! ETag, or an object whose size differs from what was sent, fails and leaves nothing behind.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::error::{denied, not_implemented, precondition_failed};
use super::object::with_object_settings;
use super::S3Storage;
use crate::retry::{self, RetryPolicy};
use crate::storage::{Backend, StorageError, StoredPiece};

/// Time allowed to abort an upload after a failure, so cleanup cannot hang shutdown.
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);

/// First wait before a failed part is sent again; the waits double from there.
const PART_RETRY_MIN_WAIT: Duration = Duration::from_millis(500);
/// Longest wait between two attempts at a part.
const PART_RETRY_MAX_WAIT: Duration = Duration::from_secs(30);

impl S3Storage {
    /// Streams `body` into one or more objects (pieces) under `key`; on failure removes the
    /// pieces already complete.
    pub(super) async fn put_pieces(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Unpin + Send),
        expected_size: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<StoredPiece>, StorageError> {
        let part_size = self
            .fixed_part_size
            .unwrap_or_else(|| crate::storage::choose_part_size(expected_size, self.max_parts))
            as usize;
        tracing::debug!(key, part_size, "streaming upload");
        let mut pieces: Vec<StoredPiece> = Vec::new();
        let result = async {
            loop {
                let first = tokio::select! {
                    r = Self::read_part(key, body, part_size) => r?,
                    _ = cancel.cancelled() => return Err(StorageError::Cancelled),
                };
                if first.is_empty() && !pieces.is_empty() {
                    return Ok(());
                }
                let piece = crate::keys::piece_key(key, pieces.len() as u32 + 1);
                let (size, eof) = self
                    .upload_piece(&piece, first, body, part_size, cancel)
                    .await?;
                pieces.push(StoredPiece { key: piece, size });
                if eof {
                    return Ok(());
                }
                tracing::info!(
                    key,
                    pieces = pieces.len(),
                    "dump outgrew one object; continuing in the next piece"
                );
            }
        }
        .await;
        match result {
            Ok(()) => Ok(pieces),
            Err(e) => {
                // Earlier pieces are complete objects: remove them, a partial stream is no backup.
                for p in &pieces {
                    self.delete_quietly(&p.key).await;
                }
                Err(e)
            }
        }
    }

    /// Reads up to `size` bytes: a full part, or what remains before EOF.
    async fn read_part(
        key: &str,
        body: &mut (dyn AsyncRead + Unpin + Send),
        size: usize,
    ) -> Result<Bytes, StorageError> {
        let mut buf = BytesMut::with_capacity(size);
        while buf.len() < size {
            let n = body
                .read_buf(&mut buf)
                .await
                .map_err(|source| StorageError::Source {
                    key: key.into(),
                    source,
                })?;
            if n == 0 {
                break;
            }
        }
        Ok(buf.freeze())
    }

    /// Uploads one part, retrying transient failures; the part is a buffer, so it can be resent.
    /// Cancelling `cancel` ends the wait between attempts.
    async fn upload_part(
        &self,
        key: String,
        upload_id: String,
        number: i32,
        data: Bytes,
        cancel: CancellationToken,
    ) -> Result<CompletedPart, StorageError> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&data));
        let policy = part_retry_policy(self.part_attempts, self.part_timeout);
        let timeout = policy.attempt_timeout;
        let (key_ref, upload_id, md5, data_ref) = (&key, &upload_id, &md5, &data);
        let attempt = |_| async move {
            let send = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key_ref)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(data_ref.len() as i64)
                .content_md5(md5)
                .body(ByteStream::from(data_ref.clone()))
                .customize()
                // Content-MD5 already protects the part; hashing it again with SHA-256 for
                // the signature would cost a second pass over every byte.
                .disable_payload_signing()
                // Retries happen here, through `retry::retry` with the part's own policy.
                .config_override(
                    aws_sdk_s3::config::Builder::new()
                        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()),
                )
                .send();
            match tokio::time::timeout(timeout, send).await {
                Err(_) => Err(StorageError::Timeout {
                    op: "upload a part of",
                    key: key_ref.clone(),
                    secs: timeout.as_secs(),
                }),
                Ok(r) => r.map_err(|e| self.map_err("upload a part of", key_ref, e)),
            }
        };
        let (out, _) = retry::retry(
            &policy,
            &cancel,
            StorageError::is_permanent,
            |_, e, wait| {
                if let Some(after) = wait {
                    tracing::warn!(part = number, key = %key, "part upload failed, retrying in {after:?}: {e}");
                }
            },
            attempt,
        )
        .await;
        let out = match out {
            Ok(out) => out,
            // The retries stopped because the upload was cancelled, not because they ran out.
            Err(_) if cancel.is_cancelled() => return Err(StorageError::Cancelled),
            Err(e) => return Err(e),
        };
        let etag = out.e_tag().ok_or_else(|| StorageError::Incomplete {
            key: key.clone(),
            reason: format!("part {number} was answered without an ETag"),
        })?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .e_tag(etag)
            .build())
    }

    /// Sends `first` and then parts read from `body` until EOF or `max_parts`; returns the
    /// completed parts, the bytes sent, and whether EOF was reached.
    async fn send_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        body: &mut (dyn AsyncRead + Unpin + Send),
        part_size: usize,
        cancel: &CancellationToken,
    ) -> Result<(Vec<CompletedPart>, u64, bool), StorageError> {
        let mut in_flight: JoinSet<Result<CompletedPart, StorageError>> = JoinSet::new();
        let mut done = Vec::new();
        let mut sent = 0u64;
        let mut number: i32 = 1;
        let mut data = first;
        let eof = loop {
            let short = data.len() < part_size;
            sent += data.len() as u64;
            let this = self.clone();
            let (k, id) = (key.to_string(), upload_id.to_string());
            let cancel = cancel.clone();
            in_flight.spawn(async move { this.upload_part(k, id, number, data, cancel).await });
            if in_flight.len() >= self.parts_in_flight {
                done.push(join(in_flight.join_next().await)?);
            }
            if short {
                break true;
            }
            if number as u32 >= self.max_parts {
                break false;
            }
            data = Self::read_part(key, body, part_size).await?;
            if data.is_empty() {
                break true;
            }
            number += 1;
        };
        while let Some(r) = in_flight.join_next().await {
            done.push(join(Some(r))?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok((done, sent, eof))
    }

    /// Uploads one object: starts a multipart upload, streams parts into it, completes it and
    /// checks the result; aborts it on any failure or cancellation.
    async fn upload_piece(
        &self,
        key: &str,
        first: Bytes,
        body: &mut (dyn AsyncRead + Unpin + Send),
        part_size: usize,
        cancel: &CancellationToken,
    ) -> Result<(u64, bool), StorageError> {
        let create = with_object_settings!(
            self.client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/octet-stream")
                .set_storage_class(self.storage_class.clone()),
            &self.object
        )
        .send();
        let mut create = std::pin::pin!(create);
        let created = tokio::select! {
            r = &mut create => r.map_err(|e| self.map_err("start an upload of", key, e))?,
            _ = cancel.cancelled() => {
                // The request may have created the upload already, its answer still on the
                // way: wait for it (bounded) and abort what it created, so that no upload
                // outlives the command that started it.
                if let Ok(Ok(created)) = tokio::time::timeout(ABORT_TIMEOUT, create).await {
                    if let Some(upload_id) = created.upload_id() {
                        self.abort(key, upload_id).await;
                    }
                }
                return Err(StorageError::Cancelled);
            }
        };
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StorageError::Incomplete {
                key: key.into(),
                reason: "CreateMultipartUpload returned no upload id".into(),
            })?
            .to_string();
        // Only the streaming of parts races cancellation. Completion is not interrupted: once
        // sent, S3 may commit it even if the answer never arrives, and an interrupted
        // completion could leave a whole object that no manifest describes.
        let sending = tokio::select! {
            r = self.send_parts(key, &upload_id, first, body, part_size, cancel) => r,
            _ = cancel.cancelled() => Err(StorageError::Cancelled),
        };
        let (parts, sent, eof) = match sending {
            Ok(done) => done,
            Err(e) => {
                self.abort(key, &upload_id).await;
                return Err(e);
            }
        };
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            // Never replace a stored object (see the trait's promise).
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        let checked = match completed {
            // Some stores answer 200 with an error in the body; only an ETag means success.
            Ok(c) if c.e_tag().is_some_and(|t| !t.is_empty()) => self.check_size(key, sent).await,
            Ok(_) => Err(StorageError::Incomplete {
                key: key.into(),
                reason: "CompleteMultipartUpload was answered without an ETag".into(),
            }),
            Err(e) if precondition_failed(&e) => {
                // The object under `key` is not this upload's: it stays, only the upload goes.
                // (Should the SDK have retried a completion whose answer was lost, the object
                // is this upload's after all; the backup then fails, and its dump, having no
                // manifest, is removed by the next backup of the database.)
                self.abort(key, &upload_id).await;
                return Err(StorageError::AlreadyExists { key: key.into() });
            }
            Err(e) => Err(self.map_err("complete the upload of", key, e)),
        };
        if let Err(e) = checked {
            // Whether or not the completion took effect, nothing of this upload may remain.
            self.abort(key, &upload_id).await;
            self.delete_quietly(key).await;
            return Err(e);
        }
        Ok((sent, eof))
    }

    /// Checks that the completed object holds exactly the bytes sent.
    async fn check_size(&self, key: &str, sent: u64) -> Result<(), StorageError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.map_err("check", key, e))?;
        let stored = head.content_length().unwrap_or(-1);
        if stored != sent as i64 {
            return Err(StorageError::Incomplete {
                key: key.into(),
                reason: format!("stored object has {stored} bytes, {sent} were sent"),
            });
        }
        Ok(())
    }

    /// Deletes `key` on a failure path, where the original error is the one to report.
    async fn delete_quietly(&self, key: &str) {
        if let Err(e) = self.delete(key).await {
            tracing::warn!(key, "could not remove a partial backup object (the next backup of this database removes it): {e}");
        }
    }

    pub(super) async fn abort(&self, key: &str, upload_id: &str) {
        let abort = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send();
        match tokio::time::timeout(ABORT_TIMEOUT, abort).await {
            Ok(Ok(_)) => tracing::debug!(key, "aborted multipart upload"),
            Ok(Err(e)) => tracing::warn!(
                key,
                "could not abort multipart upload (it will be cleaned at the next start): {}",
                self.map_err("abort the upload of", key, e)
            ),
            Err(_) => tracing::warn!(
                key,
                "aborting the multipart upload timed out; it will be cleaned at the next start"
            ),
        }
    }

    /// Key, upload id and start time of every unfinished upload under `prefix`.
    pub(super) async fn list_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, Option<DateTime<Utc>>)>, StorageError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| {
                    if not_implemented(&e) {
                        StorageError::Unsupported {
                            op: "ListMultipartUploads",
                            bucket: self.bucket.clone(),
                        }
                    } else {
                        denied(
                            &self.bucket,
                            "s3:ListBucketMultipartUploads",
                            self.map_err("list uploads in", prefix, e),
                        )
                    }
                })?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    let initiated = u
                        .initiated()
                        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
                    out.push((k.to_string(), id.to_string(), initiated));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Aborts the unfinished dump uploads under `prefix` begun before `started_before`.
    pub(super) async fn sweep_stale_uploads(
        &self,
        prefix: &str,
        started_before: Option<DateTime<Utc>>,
    ) -> Result<usize, StorageError> {
        let mut n = 0;
        for (key, id, initiated) in self.list_uploads(prefix).await? {
            if crate::keys::is_dump_key(&key)
                && crate::storage::begun_before(initiated, started_before)
            {
                tracing::info!(key, "aborting an unfinished upload left by an earlier run");
                self.abort(&key, &id).await;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// How a part upload is retried: `attempts` attempts in all, exponential waits from half a
/// second up to 30 seconds, with jitter, each attempt bounded by `timeout`.
fn part_retry_policy(attempts: u32, timeout: Duration) -> RetryPolicy {
    RetryPolicy {
        attempts,
        interval: PART_RETRY_MIN_WAIT,
        exponential: true,
        max_interval: PART_RETRY_MAX_WAIT,
        jitter: true,
        attempt_timeout: timeout,
    }
}

fn join(
    r: Option<Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, StorageError> {
    match r {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(StorageError::Incomplete {
            key: String::new(),
            reason: format!("part upload task failed: {e}"),
        }),
        None => Err(StorageError::Incomplete {
            key: String::new(),
            reason: "no part upload was running".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_tried_part_attempts_times_with_growing_waits() {
        for attempts in [0, 1, 2, 5, 12] {
            let policy = part_retry_policy(attempts, Duration::from_secs(60));
            let waits: Vec<Duration> = retry::delays(&policy).collect();
            assert_eq!(waits.len(), attempts.saturating_sub(1) as usize);
            // Jitter adds up to one more wait on top of each.
            for w in waits {
                assert!(
                    w >= PART_RETRY_MIN_WAIT && w <= 2 * PART_RETRY_MAX_WAIT,
                    "{w:?}"
                );
            }
        }
    }
}
