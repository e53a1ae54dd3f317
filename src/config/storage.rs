//! Configuration: the storage URL and S3 settings, checked against S3's limits.

use super::validate::validate_retention;
use super::*;

pub(super) fn validate_storage(
    raw: RawStorage,
    sources: &Sources,
) -> Result<StorageConfig, ConfigError> {
    if raw.name.is_some() {
        return Err(ConfigError::invalid(
            "storage.name",
            "only [[copies]] entries have a name; [storage] is `primary`",
        ));
    }
    if raw.retention.is_some() {
        return Err(ConfigError::invalid(
            "storage.retention",
            "the primary's retention is [retention] (PGSIDECAR_RETENTION__…)",
        ));
    }
    let url = raw.url.ok_or_else(|| {
        ConfigError::invalid(
            "storage.url",
            "is required: set PGSIDECAR_STORAGE__URL=s3://bucket/prefix (or file:///path)",
        )
    })?;
    let location = parse_storage_url(&url)?;
    // An empty value (a compose file's `${VAR:-}`) means unset. The SDK's S3-only variable
    // is read here, not by storage, so the endpoint has one source of truth (`AWS_ENDPOINT_URL`
    // the SDK reads itself).
    let nonblank = |e: &String| !e.trim().is_empty();
    let (endpoint_key, endpoint) = match raw.endpoint.filter(nonblank) {
        Some(e) => ("storage.endpoint", Some(e)),
        None => (
            "AWS_ENDPOINT_URL_S3",
            sources
                .var("AWS_ENDPOINT_URL_S3")
                .map(str::to_string)
                .filter(nonblank),
        ),
    };
    // Blank values and files mean "use the AWS default chain" (an instance role), so one
    // compose file serves both.
    let access_key_id = optional_secret(
        "storage.access_key_id",
        raw.access_key_id,
        raw.access_key_id_file.as_deref(),
    )?;
    let secret_access_key = optional_secret(
        "storage.secret_access_key",
        raw.secret_access_key,
        raw.secret_access_key_file.as_deref(),
    )?;
    if access_key_id.is_some() != secret_access_key.is_some() {
        return Err(ConfigError::invalid(
            if access_key_id.is_some() {
                "storage.secret_access_key"
            } else {
                "storage.access_key_id"
            },
            "set both storage.access_key_id and storage.secret_access_key (or neither, for the AWS default chain)",
        ));
    }
    if let Some(endpoint) = &endpoint {
        let parsed = url::Url::parse(endpoint).map_err(|e| {
            ConfigError::invalid(endpoint_key, format!("`{endpoint}` is not a URL ({e})"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ConfigError::invalid(
                endpoint_key,
                format!("`{endpoint}` must be an http:// or https:// URL"),
            ));
        }
    }
    let part_size = raw.part_size.map(|s| s.as_u64());
    if let Some(size) = part_size {
        if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&size) {
            return Err(ConfigError::invalid(
                "storage.part_size",
                format!("{size} bytes is outside S3's limits of 5 MiB to 5 GiB"),
            ));
        }
    }
    let max_parts = raw.max_parts.unwrap_or(S3_MAX_PARTS);
    if !(1..=S3_MAX_PARTS).contains(&max_parts) {
        return Err(ConfigError::invalid(
            "storage.max_parts",
            format!("{max_parts} is outside 1 to {S3_MAX_PARTS}"),
        ));
    }
    let parts_in_flight = raw.parts_in_flight.unwrap_or(2);
    if !(1..=64).contains(&parts_in_flight) {
        return Err(ConfigError::invalid(
            "storage.parts_in_flight",
            format!("{parts_in_flight} is outside 1 to 64"),
        ));
    }
    let part_attempts = raw.part_attempts.unwrap_or(5);
    if part_attempts == 0 {
        return Err(ConfigError::invalid(
            "storage.part_attempts",
            "must be at least 1",
        ));
    }
    let part_timeout = raw.part_timeout.unwrap_or(Duration::from_secs(120));
    if part_timeout.is_zero() {
        return Err(ConfigError::invalid(
            "storage.part_timeout",
            "must be above zero",
        ));
    }
    let sse = match raw.sse.as_deref() {
        None | Some("") => {
            if raw.sse_kms_key_id.is_some() {
                return Err(ConfigError::invalid(
                    "storage.sse_kms_key_id",
                    "needs storage.sse = \"aws:kms\"",
                ));
            }
            None
        }
        Some("AES256") => Some(Sse::Aes256),
        Some("aws:kms") => Some(Sse::Kms {
            key_id: raw.sse_kms_key_id.clone(),
        }),
        Some(other) => {
            return Err(ConfigError::invalid(
                "storage.sse",
                format!("`{other}` is not `AES256` or `aws:kms`"),
            ))
        }
    };
    let object_lock = match (raw.object_lock_mode.as_deref(), raw.object_lock_retain) {
        (None, None) => None,
        (Some(mode @ ("GOVERNANCE" | "COMPLIANCE")), Some(retain)) if !retain.is_zero() => {
            Some(ObjectLock {
                mode: mode.to_string(),
                retain,
            })
        }
        (Some(mode), _) if !matches!(mode, "GOVERNANCE" | "COMPLIANCE") => {
            return Err(ConfigError::invalid(
                "storage.object_lock_mode",
                format!("`{mode}` is not `GOVERNANCE` or `COMPLIANCE`"),
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "storage.object_lock_mode",
                "is required with storage.object_lock_retain (`GOVERNANCE` or `COMPLIANCE`)",
            ))
        }
        _ => {
            return Err(ConfigError::invalid(
                "storage.object_lock_retain",
                "is required with storage.object_lock_mode and must be above zero (e.g. `30d`)",
            ))
        }
    };
    let l = raw.lifecycle;
    let lifecycle = if l.expire_after_days.is_none()
        && l.transition_after_days.is_none()
        && l.abort_incomplete_after_days.is_none()
    {
        if l.transition_storage_class.is_some() {
            return Err(ConfigError::invalid(
                "storage.lifecycle.transition_storage_class",
                "needs storage.lifecycle.transition_after_days",
            ));
        }
        None
    } else {
        for (k, v) in [
            ("expire_after_days", l.expire_after_days),
            ("transition_after_days", l.transition_after_days),
            ("abort_incomplete_after_days", l.abort_incomplete_after_days),
        ] {
            if v == Some(0) {
                return Err(ConfigError::invalid(
                    &format!("storage.lifecycle.{k}"),
                    "must be at least 1",
                ));
            }
        }
        let transition = match (l.transition_after_days, l.transition_storage_class) {
            (None, None) => None,
            (Some(d), Some(c)) => Some((d, c)),
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "storage.lifecycle.transition_storage_class",
                    "is required with transition_after_days (e.g. `GLACIER_IR`)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "storage.lifecycle.transition_after_days",
                    "is required with transition_storage_class",
                ))
            }
        };
        if let (Some(e), Some((t, _))) = (l.expire_after_days, &transition) {
            if *t >= e {
                return Err(ConfigError::invalid(
                    "storage.lifecycle.transition_after_days",
                    format!("{t} is not before expire_after_days ({e})"),
                ));
            }
        }
        Some(Lifecycle {
            expire_after_days: l.expire_after_days,
            transition,
            abort_incomplete_after_days: l.abort_incomplete_after_days.unwrap_or(1),
            rule_id_prefix: l.rule_id_prefix.unwrap_or_else(|| "pgsidecar".to_string()),
        })
    };
    let tags = raw.tags.unwrap_or_default();
    if tags.len() > 10 {
        return Err(ConfigError::invalid(
            "storage.tags",
            format!("has {} tags; S3 allows at most 10 per object", tags.len()),
        ));
    }
    // S3's tag alphabet: letters, digits, spaces and `+ - = . _ : / @`.
    let tag_ok = |t: &str| {
        t.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "+-=._:/@".contains(c))
    };
    for (k, v) in &tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 || !tag_ok(k) || !tag_ok(v) {
            return Err(ConfigError::invalid(
                &format!("storage.tags.{k}"),
                format!("`{k}={v}`: keys are 1-128 and values up to 256 characters of letters, digits, spaces and + - = . _ : / @"),
            ));
        }
    }
    Ok(StorageConfig {
        access_key_id,
        secret_access_key,
        sse,
        tags,
        object_lock,
        lifecycle,
        url,
        location,
        endpoint,
        region: raw.region.filter(|r| !r.trim().is_empty()),
        path_style: raw.path_style,
        storage_class: raw.storage_class,
        part_size,
        max_parts,
        parts_in_flight,
        part_attempts,
        part_timeout,
    })
}

/// Parses `s3://bucket/prefix` or `file:///path`.
pub fn parse_storage_url(text: &str) -> Result<StorageLocation, ConfigError> {
    let bad = |m: String| ConfigError::invalid("storage.url", m);
    let parsed = url::Url::parse(text).map_err(|e| bad(format!("`{text}` is not a URL ({e})")))?;
    match parsed.scheme() {
        "s3" => {
            let bucket = parsed.host_str().unwrap_or_default().to_string();
            if !valid_bucket_name(&bucket) {
                return Err(bad(format!(
                    "`{bucket}` is not a valid bucket name (3-63 characters: lower-case letters, digits, `.` and `-`)"
                )));
            }
            // The prefix as written, not as a URL encodes it: `s3://b/nightly backups` means
            // the keys `nightly backups/…`, as other S3 tools and IAM policies read it (the
            // URL form would store `nightly%20backups/…`). Only control characters are refused.
            let after_bucket = &text["s3://".len().min(text.len())..];
            let written = after_bucket.split_once('/').map_or("", |(_, p)| p);
            if let Some(c) = written.chars().find(|c| c.is_control()) {
                return Err(bad(format!(
                    "the prefix `{}` holds the control character U+{:04X}",
                    written.escape_debug(),
                    c as u32
                )));
            }
            let prefix = written.trim_matches('/').to_string();
            Ok(StorageLocation::S3 { bucket, prefix })
        }
        "file" => {
            let root = parsed
                .to_file_path()
                .map_err(|_| bad(format!("`{text}` is not an absolute file path")))?;
            Ok(StorageLocation::Local { root })
        }
        other => Err(bad(format!(
            "scheme `{other}` is not supported: use s3://bucket/prefix or file:///path"
        ))),
    }
}

pub(super) fn valid_bucket_name(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The `[[copies]]` destinations, checked like `[storage]`; errors name `copies.NAME.KEY`.
pub(super) fn validate_copies(
    raw: std::collections::BTreeMap<String, RawStorage>,
    primary: &StorageConfig,
    sources: &Sources,
) -> Result<Vec<crate::pipeline::destinations::CopyConfig>, ConfigError> {
    use crate::pipeline::destinations::{CopyConfig, PRIMARY};
    let mut copies: Vec<CopyConfig> = Vec::new();
    for (name, rc) in raw {
        let section = format!("copies.{name}");
        let valid_name = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c));
        if !valid_name {
            return Err(ConfigError::invalid(
                &section,
                format!("`{name}` is not a destination name: lower-case letters, digits, `-` and `_`, at most 32"),
            ));
        }
        if name == PRIMARY {
            return Err(ConfigError::invalid(
                &section,
                "`primary` is the name of [storage]; give the copy another name",
            ));
        }
        if let Some(n) = rc.name.as_deref().filter(|n| *n != name) {
            return Err(ConfigError::invalid(
                &format!("{section}.name"),
                format!("`{n}` differs from the table's name `{name}`"),
            ));
        }
        // A blank URL (a compose file's `${VAR:-}`) leaves the copy off.
        if rc.url.as_deref().is_some_and(|u| u.trim().is_empty()) {
            continue;
        }
        if rc.url.is_none() {
            return Err(ConfigError::invalid(
                &format!("{section}.url"),
                format!(
                    "is required: set PGSIDECAR_COPIES__{}__URL=s3://bucket/prefix (or file:///path)",
                    name.to_ascii_uppercase()
                ),
            ));
        }
        let retention = match rc.retention.clone() {
            Some(r) => validate_retention(r)
                .map_err(|e| e.in_section("retention", &format!("{section}.retention")))?,
            None => None,
        };
        let raw_storage = RawStorage {
            name: None,
            retention: None,
            ..rc
        };
        let mut storage = validate_storage(raw_storage, sources)
            .map_err(|e| e.in_section("storage", &section))?;
        // Another bucket of the same store (the same endpoint) is reached with the same keys,
        // region and addressing unless the copy sets its own; a store elsewhere never
        // receives the primary's keys.
        if storage.endpoint == primary.endpoint {
            if storage.access_key_id.is_none() {
                storage.access_key_id = primary.access_key_id.clone();
                storage.secret_access_key = primary.secret_access_key.clone();
            }
            if storage.region.is_none() {
                storage.region = primary.region.clone();
            }
            if storage.path_style.is_none() {
                storage.path_style = primary.path_style;
            }
        }
        let same_place = |other: &StorageConfig| {
            other.location == storage.location && other.endpoint == storage.endpoint
        };
        if same_place(primary) {
            return Err(ConfigError::invalid(
                &format!("{section}.url"),
                format!(
                    "`{}` is where [storage] writes: a copy must be somewhere else",
                    storage.url
                ),
            ));
        }
        if let Some(twin) = copies.iter().find(|c| same_place(&c.storage)) {
            return Err(ConfigError::invalid(
                &format!("{section}.url"),
                format!(
                    "`{}` is where copy `{}` writes already",
                    storage.url, twin.name
                ),
            ));
        }
        copies.push(CopyConfig {
            name,
            storage,
            retention,
        });
    }
    Ok(copies)
}

/// `destinations.policy`: `all` (the default) or `any`.
pub(super) fn validate_delivery(
    raw: RawDestinations,
) -> Result<crate::pipeline::destinations::Delivery, ConfigError> {
    use crate::pipeline::destinations::Delivery;
    match raw.policy.as_deref().map(str::trim) {
        None | Some("") | Some("all") => Ok(Delivery::All),
        Some("any") => Ok(Delivery::Any),
        Some(other) => Err(ConfigError::invalid(
            "destinations.policy",
            format!("`{other}` is not `all` or `any`"),
        )),
    }
}
