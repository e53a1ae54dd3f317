//! S3 storage (AWS or any S3-compatible store), streaming through multipart uploads.
//!
//! Invariants, each learned from a store that punished its absence:
//! - memory is bounded: at most `parts_in_flight + 1` part buffers exist at once, whatever the
//!   database size; a full pool stops reading, which stops pg_dump through its pipe;
//! - all parts but the last have the same size (R2 rejects otherwise);
//! - an upload completes only after clean EOF and is aborted explicitly on every other path
//!   (dropping it would leave it billed and invisible);
//! - a completion without an ETag, or an object whose size differs from what was sent, fails;
//! - checksums are sent only when required, plus Content-MD5 per part: newer SDK defaults add
//!   CRC headers that older MinIO, Garage and R2 reject.

use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, StorageClass};
use aws_sdk_s3::Client;
use backon::{ExponentialBuilder, Retryable};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Backend, ObjectInfo, StorageError, StoredPiece};
use crate::config::StorageConfig;
use crate::transform::BoxRead;

/// Time allowed to abort an upload after a failure, so cleanup cannot hang shutdown.
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);

/// An S3 bucket. Cloning shares the client.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    storage_class: Option<StorageClass>,
    fixed_part_size: Option<u64>,
    max_parts: u32,
    parts_in_flight: usize,
    part_attempts: u32,
    part_timeout: Duration,
}

impl S3Storage {
    /// Builds a client from aws-config's default chain (env, profile, container and instance
    /// roles, web identity), with the storage settings on top.
    pub async fn new(cfg: &StorageConfig, bucket: &str) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &cfg.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &cfg.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        // MinIO, Garage and moto serve buckets by path, not by virtual host.
        let custom_endpoint =
            sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            // A stalled connection must fail, not hang a backup or shutdown.
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(cfg.part_timeout)
                    .build(),
            )
            .force_path_style(cfg.path_style.unwrap_or(custom_endpoint))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            // S3-compatible stores ignore the region but the signer needs one.
            builder = builder.region(Region::new("us-east-1"));
        }
        S3Storage {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_string(),
            storage_class: cfg.storage_class.as_deref().map(StorageClass::from),
            fixed_part_size: cfg.part_size,
            max_parts: cfg.max_parts,
            parts_in_flight: cfg.parts_in_flight,
            part_attempts: cfg.part_attempts,
            part_timeout: cfg.part_timeout,
        }
    }

    fn map_err<E>(
        &self,
        op: &'static str,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code().unwrap_or_default().to_string();
                let message = se.err().message().unwrap_or_default().to_string();
                match (code.as_str(), status) {
                    ("NoSuchBucket", _) => StorageError::NoSuchBucket {
                        bucket: self.bucket.clone(),
                    },
                    ("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch", _)
                    | (_, 403) => StorageError::AccessDenied {
                        bucket: self.bucket.clone(),
                        op,
                        code: if code.is_empty() {
                            "HTTP 403".into()
                        } else {
                            code
                        },
                    },
                    ("NoSuchKey" | "NotFound", _) | ("", 404) => {
                        StorageError::NotFound { key: key.into() }
                    }
                    _ => StorageError::Service {
                        op,
                        key: key.into(),
                        status,
                        code,
                        message,
                    },
                }
            }
            SdkError::TimeoutError(_) => StorageError::Timeout {
                op,
                key: key.into(),
                secs: 0,
            },
            _ => StorageError::Unreachable {
                op,
                key: key.into(),
                cause: DisplayErrorContext(&err).to_string(),
            },
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
    async fn upload_part(
        &self,
        key: String,
        upload_id: String,
        number: i32,
        data: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&data));
        let timeout = self.part_timeout;
        let attempt = || async {
            let send = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .content_length(data.len() as i64)
                .content_md5(&md5)
                .body(ByteStream::from(data.clone()))
                .customize()
                // Content-MD5 already protects the part; hashing it again with SHA-256 for
                // the signature would cost a second pass over every byte.
                .disable_payload_signing()
                // Retries happen here, with the part's own backoff and timeout.
                .config_override(
                    aws_sdk_s3::config::Builder::new()
                        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()),
                )
                .send();
            match tokio::time::timeout(timeout, send).await {
                Err(_) => Err(StorageError::Timeout {
                    op: "upload a part of",
                    key: key.clone(),
                    secs: timeout.as_secs(),
                }),
                Ok(r) => r.map_err(|e| self.map_err("upload a part of", &key, e)),
            }
        };
        let out = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(30))
                    .with_max_times(self.part_attempts.saturating_sub(1) as usize)
                    .with_jitter(),
            )
            .when(|e: &StorageError| !e.is_permanent())
            .notify(|e: &StorageError, after: Duration| {
                tracing::warn!(part = number, key = %key, "part upload failed, retrying in {after:?}: {e}");
            })
            .await?;
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
            in_flight.spawn(async move { this.upload_part(k, id, number, data).await });
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
        let create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .set_storage_class(self.storage_class.clone())
            .send();
        // An upload created just before cancellation is aborted by the next backup.
        let created = tokio::select! {
            r = create => r.map_err(|e| self.map_err("start an upload of", key, e))?,
            _ = cancel.cancelled() => return Err(StorageError::Cancelled),
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
            r = self.send_parts(key, &upload_id, first, body, part_size) => r,
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

    async fn get_object(&self, key: &str) -> Result<ByteStream, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.map_err("read", key, e))?;
        Ok(out.body)
    }

    async fn abort(&self, key: &str, upload_id: &str) {
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

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>, StorageError> {
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
                .map_err(|e| self.map_err("list uploads in", prefix, e))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    out.push((k.to_string(), id.to_string()));
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

impl Backend for S3Storage {
    async fn put_stream(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Unpin + Send),
        expected_size: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<StoredPiece>, StorageError> {
        let part_size = self
            .fixed_part_size
            .unwrap_or_else(|| super::choose_part_size(expected_size, self.max_parts))
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
                let piece = super::piece_key(key, pieces.len() as u32 + 1);
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

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&bytes));
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .content_md5(md5)
            .content_length(bytes.len() as i64)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.map_err("write", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<BoxRead, StorageError> {
        Ok(Box::pin(self.get_object(key).await?.into_async_read()))
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let data =
            self.get_object(key)
                .await?
                .collect()
                .await
                .map_err(|e| StorageError::Unreachable {
                    op: "read",
                    key: key.into(),
                    cause: e.to_string(),
                })?;
        Ok(data.into_bytes())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.map_err("list", prefix, e))?;
            for o in page.contents() {
                out.push(ObjectInfo {
                    key: o.key().unwrap_or_default().to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o
                        .last_modified()
                        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.map_err("delete", key, e))?;
        Ok(())
    }

    async fn abort_stale_uploads(&self, prefix: &str) -> Result<usize, StorageError> {
        let mut n = 0;
        for (key, id) in self.list_uploads(prefix).await? {
            if super::is_dump_key(&key) {
                tracing::info!(key, "aborting an unfinished upload left by an earlier run");
                self.abort(&key, &id).await;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .list_uploads(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
}
