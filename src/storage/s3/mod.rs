//! Storage stage, S3 client (AWS or any S3-compatible store), streaming through multipart uploads.
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
//!
//! This module holds the client (construction, reads, lists, deletes, whole-object writes);
//! `multipart` streams uploads, `lifecycle` edits bucket rules, `object` builds the per-object
//! headers and `error` names the causes of failures.

mod error;
mod lifecycle;
mod multipart;
mod object;

use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::StorageClass;
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use self::error::precondition_failed;
use self::object::{with_object_settings, ObjectSettings};
use super::{Backend, LifecycleChange, ObjectInfo, StorageError, StoredPiece};
use crate::codec::compress::BoxRead;
use crate::storage::Lifecycle;
use crate::storage::StorageConfig;

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
        // The endpoint may also come from the SDK's own variable (AWS_ENDPOINT_URL), which the
        // configuration never sees.
        if let Some(endpoint) = sdk.endpoint_url().filter(|e| e.starts_with("http://")) {
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
        let custom_endpoint = sdk.endpoint_url().is_some();
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
}

impl Backend for S3Storage {
    async fn put_stream(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Unpin + Send),
        expected_size: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<StoredPiece>, StorageError> {
        self.put_pieces(key, body, expected_size, cancel).await
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
        self.sweep_stale_uploads(prefix, started_before).await
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
        self.edit_lifecycle(lifecycle, prefix).await
    }
}
