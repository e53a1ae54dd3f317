//! Storage stage, S3 object settings: the encryption, tagging and object-lock headers put on
//! every object written. Invariant kept: a header is sent only when its setting is configured
//! (stores that lack a feature reject its header), and then on every object, dump pieces,
//! globals and manifests alike; a lock never ends before `now + retain`.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::types::{ObjectLockMode, ServerSideEncryption};
use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::storage::{Sse, StorageConfig};

/// Encryption, tags and retention put on every object written; each `None` sends no header.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ObjectSettings {
    pub(super) sse: Option<ServerSideEncryption>,
    pub(super) kms_key_id: Option<String>,
    /// The `x-amz-tagging` value: `k=v&k2=v2`, URL-encoded.
    pub(super) tagging: Option<String>,
    pub(super) lock: Option<(ObjectLockMode, Duration)>,
}

impl ObjectSettings {
    pub(super) fn from_config(cfg: &StorageConfig) -> Self {
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
    pub(super) fn retain_until(&self, now: DateTime<Utc>) -> Option<aws_smithy_types::DateTime> {
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
        let s: &$crate::storage::s3::object::ObjectSettings = $settings;
        $request
            .set_server_side_encryption(s.sse.clone())
            .set_ssekms_key_id(s.kms_key_id.clone())
            .set_tagging(s.tagging.clone())
            .set_object_lock_mode(s.lock.as_ref().map(|(mode, _)| mode.clone()))
            .set_object_lock_retain_until_date(s.retain_until(::chrono::Utc::now()))
    }};
}
pub(super) use with_object_settings;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
