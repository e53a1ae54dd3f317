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
//!   CRC headers that older MinIO, Garage and R2 reject (Content-MD5 is also what S3 demands
//!   of a write under object lock);
//! - encryption, tagging and object lock headers are sent only when configured, and then on
//!   every object written (dump pieces, globals, manifests): stores that lack a feature reject
//!   its header;
//! - bucket lifecycle rules are edited, never replaced: rules the sidecar does not own survive;
//! - no write replaces an object: PutObject and CompleteMultipartUpload carry
//!   `If-None-Match: *` (AWS honours it since 2024; so do moto and s3s-fs), and an object found
//!   in the way is left as it is.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, CompletedMultipartUpload,
    CompletedPart, ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    ObjectLockMode, ServerSideEncryption, StorageClass, Transition, TransitionStorageClass,
};
use aws_sdk_s3::Client;
use backon::{ExponentialBuilder, Retryable};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Backend, LifecycleChange, ObjectInfo, StorageError, StoredPiece};
use crate::codec::compress::BoxRead;
use crate::storage::Lifecycle;
use crate::storage::Sse;
use crate::storage::StorageConfig;

/// Time allowed to abort an upload after a failure, so cleanup cannot hang shutdown.
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Encryption, tags and retention put on every object written; each `None` sends no header.
#[derive(Clone, Debug, Default, PartialEq)]
struct ObjectSettings {
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
    /// The `x-amz-tagging` value: `k=v&k2=v2`, URL-encoded.
    tagging: Option<String>,
    lock: Option<(ObjectLockMode, Duration)>,
}

impl ObjectSettings {
    fn from_config(cfg: &StorageConfig) -> Self {
        let (sse, kms_key_id) = match &cfg.sse {
            None => (None, None),
            Some(Sse::Aes256) => (Some(ServerSideEncryption::Aes256), None),
            Some(Sse::Kms { key_id }) => (Some(ServerSideEncryption::AwsKms), key_id.clone()),
        };
        ObjectSettings {
            sse,
            kms_key_id,
            tagging: tagging_header(&cfg.tags),
            lock: cfg
                .object_lock
                .as_ref()
                .map(|l| (ObjectLockMode::from(l.mode.as_str()), l.retain)),
        }
    }

    /// The retain-until date of an object written at `now`.
    fn retain_until(&self, now: DateTime<Utc>) -> Option<aws_smithy_types::DateTime> {
        let (_, retain) = self.lock.as_ref()?;
        let until = chrono::Duration::from_std(*retain)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        // Whole seconds, rounded up: the lock never ends before `now + retain`.
        let secs = until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0);
        Some(aws_smithy_types::DateTime::from_secs(secs))
    }
}

/// Applies [`ObjectSettings`] to a PutObject or CreateMultipartUpload request: the two
/// builders have the same setters but share no trait.
macro_rules! with_object_settings {
    ($request:expr, $settings:expr) => {{
        let s: &ObjectSettings = $settings;
        $request
            .set_server_side_encryption(s.sse.clone())
            .set_ssekms_key_id(s.kms_key_id.clone())
            .set_tagging(s.tagging.clone())
            .set_object_lock_mode(s.lock.as_ref().map(|(mode, _)| mode.clone()))
            .set_object_lock_retain_until_date(s.retain_until(Utc::now()))
    }};
}

/// Characters left as they are in a tag key or value: RFC 3986 unreserved. Everything else is
/// percent-encoded, a space as `%20` and a plus as `%2B` (a bare `+` reads back as a space).
const TAG_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The `x-amz-tagging` header for `tags`, or `None` when there are none.
fn tagging_header(tags: &BTreeMap<String, String>) -> Option<String> {
    if tags.is_empty() {
        return None;
    }
    let pairs: Vec<String> = tags
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, TAG_KEEP),
                utf8_percent_encode(v, TAG_KEEP)
            )
        })
        .collect();
    Some(pairs.join("&"))
}

/// An S3 bucket. Cloning shares the client.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    storage_class: Option<StorageClass>,
    object: ObjectSettings,
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
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.expose(),
                secret.expose(),
                None,
                None,
                "pgsidecar configuration",
            ));
        }
        let sdk = loader.load().await;
        // The endpoint may also come from the SDK's own variables (AWS_ENDPOINT_URL, or its
        // S3-only form), which the configuration never sees.
        let endpoint = sdk
            .endpoint_url()
            .map(str::to_string)
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok());
        if let Some(endpoint) = endpoint.filter(|e| e.starts_with("http://")) {
            tracing::warn!(
                endpoint = %endpoint,
                "storage endpoint uses plain HTTP: backups cross the network unencrypted unless client-side encryption is on; use https:// outside a private network"
            );
        }
        Self::with_sdk_config(cfg, bucket, &sdk)
    }

    /// Builds a client from `sdk` (credentials, region, endpoint), with the storage settings
    /// on top; [`S3Storage::new`] passes aws-config's default chain.
    pub fn with_sdk_config(cfg: &StorageConfig, bucket: &str, sdk: &aws_config::SdkConfig) -> Self {
        // MinIO, Garage and moto serve buckets by path, not by virtual host.
        let custom_endpoint =
            sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let mut builder = aws_sdk_s3::config::Builder::from(sdk)
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
            object: ObjectSettings::from_config(cfg),
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
            _ => {
                // The SDK's own rendering ends with its debug structure: one readable line for
                // the user, the structure for whoever turns on debug logs.
                tracing::debug!(error = %DisplayErrorContext(&err), "S3 request failed");
                StorageError::Unreachable {
                    op,
                    key: key.into(),
                    cause: error_chain(&err),
                }
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

    /// Key, upload id and start time of every unfinished upload under `prefix`.
    async fn list_uploads(
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

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        // Content-MD5 is also what S3 requires of a write under object lock.
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&bytes));
        let put = with_object_settings!(
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                // Never replace a stored object: the store refuses with 412 if `key` exists.
                .if_none_match("*")
                .content_type(if key.ends_with(".json") {
                    "application/json"
                } else {
                    "application/octet-stream"
                })
                .content_md5(md5)
                .content_length(bytes.len() as i64)
                .body(ByteStream::from(bytes.clone())),
            &self.object
        )
        .send()
        .await;
        match put {
            Ok(_) => Ok(()),
            // The SDK resends a request whose answer was lost, and the resent one finds the
            // object the first stored. That write did happen: calling it refused would make
            // the caller undo the backup the object completes (a manifest, say). So an object
            // holding exactly these bytes counts as written; any other is in the way.
            Err(e) if precondition_failed(&e) => match self.get_bytes(key).await {
                Ok(stored) if stored == bytes => Ok(()),
                _ => Err(StorageError::AlreadyExists { key: key.into() }),
            },
            Err(e) => Err(self.map_err("write", key, e)),
        }
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

    async fn abort_stale_uploads(
        &self,
        prefix: &str,
        started_before: Option<DateTime<Utc>>,
    ) -> Result<usize, StorageError> {
        let mut n = 0;
        for (key, id, initiated) in self.list_uploads(prefix).await? {
            if crate::keys::is_dump_key(&key) && super::begun_before(initiated, started_before) {
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
            .map(|(k, _, _)| k)
            .collect())
    }

    async fn locked_until(&self, key: &str) -> Result<Option<DateTime<Utc>>, StorageError> {
        // Retention is shown only to callers allowed s3:GetObjectRetention; without it the
        // object looks unlocked and a prune of it only adds a delete marker.
        let head = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => head,
            Err(e) => {
                return match self.map_err("check the retention of", key, e) {
                    StorageError::NotFound { .. } => Ok(None),
                    e => Err(e),
                }
            }
        };
        let until = head
            .object_lock_retain_until_date()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()));
        Ok(until.filter(|u| *u > Utc::now()))
    }

    async fn ensure_lifecycle(
        &self,
        lifecycle: &Lifecycle,
        prefix: &str,
    ) -> Result<LifecycleChange, StorageError> {
        const READ: &str = "read the lifecycle rules of bucket";
        const WRITE: &str = "write the lifecycle rules of bucket";
        let current = match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Some(out),
            Err(e) if service_code(&e) == Some("NoSuchLifecycleConfiguration") => None,
            Err(e) if not_implemented(&e) => return Ok(LifecycleChange::Unsupported),
            Err(e) => {
                let e = self.map_err(READ, &self.bucket, e);
                return Err(denied(&self.bucket, "s3:GetLifecycleConfiguration", e));
            }
        };
        let existing = current.as_ref().map(|c| c.rules()).unwrap_or_default();
        let Some(rules) = plan_lifecycle(existing, lifecycle, prefix) else {
            return Ok(LifecycleChange::Unchanged);
        };
        let config = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .expect("rules are set");
        let put = self
            .client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(config)
            // Left out, AWS would reset a bucket's chosen minimum size to its default.
            .set_transition_default_minimum_object_size(
                current.and_then(|c| c.transition_default_minimum_object_size().cloned()),
            )
            .send()
            .await;
        match put {
            Ok(_) => Ok(LifecycleChange::Updated),
            Err(e) if not_implemented(&e) => Ok(LifecycleChange::Unsupported),
            Err(e) => {
                let e = self.map_err(WRITE, &self.bucket, e);
                Err(denied(&self.bucket, "s3:PutLifecycleConfiguration", e))
            }
        }
    }
}

/// Turns a refusal into [`StorageError::Denied`] naming `action`, so the caller can report
/// the missing permission; bad credentials stay [`StorageError::AccessDenied`].
fn denied(bucket: &str, action: &'static str, err: StorageError) -> StorageError {
    match err {
        StorageError::AccessDenied { code, .. }
            if !matches!(
                code.as_str(),
                "InvalidAccessKeyId" | "SignatureDoesNotMatch"
            ) =>
        {
            StorageError::Denied {
                action,
                bucket: bucket.to_string(),
            }
        }
        other => other,
    }
}

/// The error code of a service error, if it is one.
fn service_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.as_service_error().and_then(|e| e.code())
}

/// Whether a conditional write was refused because its condition failed: with
/// `If-None-Match: *`, an object already exists under the key. Some stores answer a completion
/// 200 with the error in the body, hence the code as well as the status.
fn precondition_failed<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match err {
        SdkError::ServiceError(se) => {
            se.raw().status().as_u16() == 412 || se.err().code() == Some("PreconditionFailed")
        }
        _ => false,
    }
}

/// Whether the store answered that it does not implement the operation.
fn not_implemented<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match err {
        SdkError::ServiceError(se) => {
            se.raw().status().as_u16() == 501 || se.err().code() == Some("NotImplemented")
        }
        _ => false,
    }
}

/// One lifecycle rule the sidecar owns, in the terms it sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnedRule {
    id: String,
    /// Key prefix the rule applies to (`""`: the whole bucket).
    prefix: String,
    expire_days: Option<i32>,
    transition: Option<(i32, String)>,
    abort_days: Option<i32>,
}

impl OwnedRule {
    /// The rules `lifecycle` asks for, for objects under `prefix`.
    fn wanted(lifecycle: &Lifecycle, prefix: &str) -> Vec<OwnedRule> {
        let days = |d: u32| i32::try_from(d).unwrap_or(i32::MAX);
        // `prod/`, not `prod`: the rules must not reach `production/…`.
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let id = &lifecycle.rule_id_prefix;
        let rule = |suffix: &str| OwnedRule {
            id: format!("{id}-{suffix}"),
            prefix: prefix.clone(),
            expire_days: None,
            transition: None,
            abort_days: None,
        };
        let mut out = Vec::new();
        if let Some(d) = lifecycle.expire_after_days {
            out.push(OwnedRule {
                expire_days: Some(days(d)),
                ..rule("expire")
            });
        }
        if let Some((d, class)) = &lifecycle.transition {
            out.push(OwnedRule {
                transition: Some((days(*d), class.clone())),
                ..rule("transition")
            });
        }
        out.push(OwnedRule {
            abort_days: Some(days(lifecycle.abort_incomplete_after_days)),
            ..rule("abort-incomplete")
        });
        out
    }

    /// Every ID the sidecar may own under `id_prefix`, whether configured now or not.
    fn ids(id_prefix: &str) -> [String; 3] {
        ["expire", "transition", "abort-incomplete"].map(|s| format!("{id_prefix}-{s}"))
    }

    /// Reads a stored rule back; `None` when it holds anything the sidecar would not set.
    fn read(rule: &LifecycleRule) -> Option<OwnedRule> {
        if *rule.status() != ExpirationStatus::Enabled
            || !rule.noncurrent_version_transitions().is_empty()
            || rule.noncurrent_version_expiration().is_some()
            || rule.transitions().len() > 1
        {
            return None;
        }
        let prefix = match rule.filter() {
            Some(f) => {
                if f.tag().is_some()
                    || f.and().is_some()
                    || f.object_size_greater_than().is_some()
                    || f.object_size_less_than().is_some()
                {
                    return None;
                }
                // Some stores answer an empty prefix with an empty filter.
                f.prefix().unwrap_or_default()
            }
            // The rule-level prefix of older configurations.
            #[allow(deprecated)]
            None => rule.prefix().unwrap_or_default(),
        };
        let expire_days = match rule.expiration() {
            None => None,
            Some(e) if e.date().is_none() && e.expired_object_delete_marker() != Some(true) => {
                Some(e.days()?)
            }
            Some(_) => return None,
        };
        let transition = match rule.transitions().first() {
            None => None,
            Some(t) if t.date().is_none() => {
                Some((t.days()?, t.storage_class()?.as_str().to_string()))
            }
            Some(_) => return None,
        };
        Some(OwnedRule {
            id: rule.id()?.to_string(),
            prefix: prefix.to_string(),
            expire_days,
            transition,
            abort_days: match rule.abort_incomplete_multipart_upload() {
                None => None,
                Some(a) => Some(a.days_after_initiation()?),
            },
        })
    }

    fn build(&self) -> LifecycleRule {
        let mut rule = LifecycleRule::builder()
            .id(&self.id)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix(&self.prefix).build());
        if let Some(days) = self.expire_days {
            rule = rule.expiration(LifecycleExpiration::builder().days(days).build());
        }
        if let Some((days, class)) = &self.transition {
            rule = rule.transitions(
                Transition::builder()
                    .days(*days)
                    .storage_class(TransitionStorageClass::from(class.as_str()))
                    .build(),
            );
        }
        if let Some(days) = self.abort_days {
            rule = rule.abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(days)
                    .build(),
            );
        }
        rule.build().expect("status is set")
    }
}

/// The bucket's new rule set, or `None` when the sidecar's rules are already as wanted: every
/// rule the sidecar does not own (by ID) is kept as it is, in its place, and the owned ones
/// are replaced by those `lifecycle` asks for.
fn plan_lifecycle(
    existing: &[LifecycleRule],
    lifecycle: &Lifecycle,
    prefix: &str,
) -> Option<Vec<LifecycleRule>> {
    let ids = OwnedRule::ids(&lifecycle.rule_id_prefix);
    let owned = |r: &&LifecycleRule| r.id().is_some_and(|id| ids.iter().any(|o| o == id));
    let wanted = OwnedRule::wanted(lifecycle, prefix);
    let mut have: Vec<Option<OwnedRule>> =
        existing.iter().filter(owned).map(OwnedRule::read).collect();
    have.sort_by(|a, b| a.as_ref().map(|r| &r.id).cmp(&b.as_ref().map(|r| &r.id)));
    let mut want: Vec<Option<OwnedRule>> = wanted.iter().cloned().map(Some).collect();
    want.sort_by(|a, b| a.as_ref().map(|r| &r.id).cmp(&b.as_ref().map(|r| &r.id)));
    if have == want {
        return None;
    }
    let mut rules: Vec<LifecycleRule> = existing.iter().filter(|r| !owned(r)).cloned().collect();
    rules.extend(wanted.iter().map(OwnedRule::build));
    Some(rules)
}

/// An error and its sources as one line, `outer: inner: root`, each message once (layers
/// often repeat their source's text).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    /// Regression: errors printed to the user ended with the SDK's debug structure
    /// (`(DispatchFailure(DispatchFailure { source: ConnectorError …`).
    #[test]
    fn error_chains_are_one_readable_line() {
        let err = Layer(
            "dispatch failure",
            Some(Box::new(Layer(
                "io error",
                Some(Box::new(Layer(
                    "tcp connect error: Connection refused (os error 111)",
                    Some(Box::new(Layer("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&err),
            "dispatch failure: io error: tcp connect error: Connection refused (os error 111)"
        );
    }

    fn lifecycle(expire: Option<u32>, transition: Option<(u32, &str)>) -> Lifecycle {
        Lifecycle {
            expire_after_days: expire,
            transition: transition.map(|(d, c)| (d, c.to_string())),
            abort_incomplete_after_days: 2,
            rule_id_prefix: "pgsidecar".into(),
        }
    }

    fn ids(rules: &[LifecycleRule]) -> Vec<&str> {
        rules.iter().filter_map(|r| r.id()).collect()
    }

    fn foreign(id: &str) -> LifecycleRule {
        LifecycleRule::builder()
            .id(id)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
            .expiration(LifecycleExpiration::builder().days(3).build())
            .build()
            .unwrap()
    }

    #[test]
    fn tags_are_url_encoded_in_key_order() {
        let tags: BTreeMap<String, String> = [
            ("team", "data & ops"),
            ("env", "prod"),
            ("cost/centre", "a+b=c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            tagging_header(&tags).unwrap(),
            "cost%2Fcentre=a%2Bb%3Dc&env=prod&team=data%20%26%20ops"
        );
        assert_eq!(tagging_header(&BTreeMap::new()), None);
    }

    #[test]
    fn nothing_configured_sends_no_header() {
        assert_eq!(ObjectSettings::default().retain_until(Utc::now()), None);
        assert_eq!(ObjectSettings::default(), ObjectSettings::default());
    }

    #[test]
    fn retention_ends_no_earlier_than_now_plus_retain() {
        let settings = ObjectSettings {
            lock: Some((ObjectLockMode::Governance, Duration::from_secs(86_400))),
            ..ObjectSettings::default()
        };
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let until = settings.retain_until(now).unwrap();
        assert_eq!(until.secs(), now.timestamp() + 86_400 + 1);
        let huge = ObjectSettings {
            lock: Some((ObjectLockMode::Compliance, Duration::MAX)),
            ..ObjectSettings::default()
        };
        assert!(huge.retain_until(now).is_some());
    }

    #[test]
    fn lifecycle_keeps_foreign_rules_and_adds_ours() {
        let existing = [foreign("keep-me"), foreign("pgsidecar-staging-expire")];
        let rules = plan_lifecycle(
            &existing,
            &lifecycle(Some(400), Some((30, "GLACIER_IR"))),
            "prod",
        )
        .expect("rules to write");
        assert_eq!(
            ids(&rules),
            [
                "keep-me",
                "pgsidecar-staging-expire",
                "pgsidecar-expire",
                "pgsidecar-transition",
                "pgsidecar-abort-incomplete"
            ]
        );
        assert_eq!(rules[0], existing[0]);
        let expire = &rules[2];
        assert_eq!(expire.filter().and_then(|f| f.prefix()), Some("prod/"));
        assert_eq!(expire.expiration().and_then(|e| e.days()), Some(400));
        let t = &rules[3].transitions()[0];
        assert_eq!(
            (t.days(), t.storage_class().map(|c| c.as_str())),
            (Some(30), Some("GLACIER_IR"))
        );
        assert_eq!(
            rules[4]
                .abort_incomplete_multipart_upload()
                .and_then(|a| a.days_after_initiation()),
            Some(2)
        );
        // Already in place: nothing to write.
        assert!(plan_lifecycle(
            &rules,
            &lifecycle(Some(400), Some((30, "GLACIER_IR"))),
            "prod"
        )
        .is_none());
    }

    #[test]
    fn lifecycle_replaces_changed_or_dropped_rules() {
        let before =
            plan_lifecycle(&[], &lifecycle(Some(400), Some((30, "GLACIER_IR"))), "").unwrap();
        assert_eq!(before[0].filter().and_then(|f| f.prefix()), Some(""));
        let after = plan_lifecycle(&before, &lifecycle(Some(500), None), "").unwrap();
        assert_eq!(
            ids(&after),
            ["pgsidecar-expire", "pgsidecar-abort-incomplete"]
        );
        assert_eq!(after[0].expiration().and_then(|e| e.days()), Some(500));
        // A rule of ours disabled by hand is put back.
        let mut disabled = after.clone();
        disabled[0] = LifecycleRule::builder()
            .id("pgsidecar-expire")
            .status(ExpirationStatus::Disabled)
            .filter(LifecycleRuleFilter::builder().prefix("").build())
            .expiration(LifecycleExpiration::builder().days(500).build())
            .build()
            .unwrap();
        assert!(plan_lifecycle(&disabled, &lifecycle(Some(500), None), "").is_some());
        // A different scope is a change.
        assert!(plan_lifecycle(&after, &lifecycle(Some(500), None), "prod").is_some());
    }

    #[test]
    fn lifecycle_reads_an_empty_filter_as_the_whole_bucket() {
        // How moto (and some stores) answer a rule put with `<Prefix></Prefix>`.
        let rule = LifecycleRule::builder()
            .id("pgsidecar-abort-incomplete")
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().build())
            .abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(2)
                    .build(),
            )
            .build()
            .unwrap();
        assert!(plan_lifecycle(&[rule], &lifecycle(None, None), "").is_none());
    }

    #[test]
    fn a_refused_lifecycle_call_names_the_permission() {
        let refused = |code: &str| StorageError::AccessDenied {
            bucket: "b".into(),
            op: "read",
            code: code.into(),
        };
        let e = denied("b", "s3:GetLifecycleConfiguration", refused("AccessDenied"));
        assert!(matches!(
            e,
            StorageError::Denied {
                action: "s3:GetLifecycleConfiguration",
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "permission `s3:GetLifecycleConfiguration` is missing on bucket `b`"
        );
        // Bad credentials are not a missing permission.
        let e = denied(
            "b",
            "s3:GetLifecycleConfiguration",
            refused("InvalidAccessKeyId"),
        );
        assert!(matches!(e, StorageError::AccessDenied { .. }));
    }
}
