//! Storage: where backups go and how objects are written (validated settings, S3's limits).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::secret::Secret;

/// Where backups go.
#[derive(Debug, Clone, Serialize)]
pub struct StorageConfig {
    pub url: String,
    #[serde(skip)]
    pub location: StorageLocation,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub storage_class: Option<String>,
    /// Fixed part size; `None` chooses one per upload from the database size.
    pub part_size: Option<u64>,
    pub max_parts: u32,
    pub parts_in_flight: usize,
    pub part_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub part_timeout: Duration,
    /// Static credentials, when configured (else the SDK's default chain).
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub sse: Option<Sse>,
    pub tags: std::collections::BTreeMap<String, String>,
    pub object_lock: Option<ObjectLock>,
    pub lifecycle: Option<Lifecycle>,
}

/// Server-side encryption of stored objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode")]
pub enum Sse {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    Kms { key_id: Option<String> },
}

/// Object lock retention put on every stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectLock {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    #[serde(with = "humantime_serde")]
    pub retain: Duration,
}

/// Lifecycle rules kept on the bucket for the storage prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    pub expire_after_days: Option<u32>,
    /// Days and storage class of a transition.
    pub transition: Option<(u32, String)>,
    pub abort_incomplete_after_days: u32,
    pub rule_id_prefix: String,
}

impl StorageConfig {
    /// The key prefix every object of this configuration lives under (may be empty).
    pub fn base_prefix(&self) -> String {
        match &self.location {
            StorageLocation::S3 { prefix, .. } => prefix.clone(),
            StorageLocation::Local { .. } => String::new(),
        }
    }
}

/// A parsed storage URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// `s3://bucket/prefix`
    S3 { bucket: String, prefix: String },
    /// `file:///path`
    Local { root: PathBuf },
}

/// S3 allows at most 10,000 parts per multipart upload.
pub const S3_MAX_PARTS: u32 = 10_000;
/// S3's smallest part (all but the last).
pub const S3_MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const S3_MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
