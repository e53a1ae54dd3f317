//! Secrets: values that must never reach a log line, an error message, a notification or
//! `config` output. The only way to read one is `expose()`, so every use is greppable.
//!
//! Typed secrets print as a placeholder, but a secret can still travel as plain text: inside
//! a library's error message, a URL echoed by a server, a child's stderr. So every secret is
//! also remembered when it is created, and [`redact`] — the one redaction layer, applied to
//! log output, errors at the command line's edge, notifications and panic messages — removes
//! known secret values, passwords inside URLs and age identities from any text.

use std::borrow::Cow;
use std::fmt;
use std::sync::{PoisonError, RwLock};

/// Every secret value seen, raw and percent-encoded (as it appears inside a URL).
static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Values shorter than this are not searched for: redacting every `ab` would garble logs,
/// and such a secret is no secret.
const MIN_LEN: usize = 4;

/// Adds `value` to the secrets [`redact`] removes, for secrets that are never held as a
/// [`Secret`] (the AWS SDK reads its keys from the environment itself).
pub fn remember(value: &str) {
    if value.len() < MIN_LEN {
        return;
    }
    let encoded = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let mut known = KNOWN.write().unwrap_or_else(PoisonError::into_inner);
    for v in [value.to_string(), encoded] {
        if !known.contains(&v) {
            known.push(v);
        }
    }
    // Longest first, so a secret containing another is replaced whole.
    known.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// `text` with every known secret, every password inside a URL (`scheme://user:pw@host`) and
/// every age identity replaced by [`REDACTED`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    {
        let known = KNOWN.read().unwrap_or_else(PoisonError::into_inner);
        for v in known.iter() {
            if out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), REDACTED));
            }
        }
    }
    if out.contains("://") {
        out = Cow::Owned(redact_url_passwords(&out));
    }
    if out.contains("AGE-SECRET-KEY-") {
        out = Cow::Owned(
            out.split_inclusive(char::is_whitespace)
                .map(|w| {
                    if w.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                        .starts_with("AGE-SECRET-KEY-")
                    {
                        REDACTED.to_string() + &w[w.trim_end().len()..]
                    } else {
                        w.to_string()
                    }
                })
                .collect(),
        );
    }
    out
}

/// Replaces the password of every `scheme://user:password@` in `text`.
fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        // The authority ends at the first `/`, `?`, `#` or whitespace; the userinfo at its
        // last `@`.
        let end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon + 1]);
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A secret string (password, key, webhook URL). Its `Debug`, `Display` and `Serialize` forms
/// are a fixed placeholder, so a struct holding one can be logged or printed safely.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What every secret prints as.
pub const REDACTED: &str = "********";

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        remember(&value);
        Secret(value)
    }

    /// The real value, for handing to a client library or a child's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rendering_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn known_secrets_url_passwords_and_identities_are_redacted_anywhere() {
        let _ = Secret::new("p@ss:w/rd%");
        let _ = Secret::new("https://hooks.slack.com/services/T0/B0/XYZ123");
        let text = "connect failed: password p@ss:w/rd% rejected; \
                    url postgres://app:p%40ss%3Aw%2Frd%25@db:5432/app; \
                    other postgres://bob:unknown-pw@h/x?sslmode=disable; \
                    posting to https://hooks.slack.com/services/T0/B0/XYZ123 failed; \
                    key AGE-SECRET-KEY-1QQQQ in file";
        let out = redact(text);
        for leak in [
            "p@ss",
            "p%40ss",
            "unknown-pw",
            "XYZ123",
            "AGE-SECRET-KEY-1QQQQ",
        ] {
            assert!(!out.contains(leak), "{leak} in {out}");
        }
        assert!(
            out.contains("postgres://bob:********@h/x?sslmode=disable"),
            "{out}"
        );
        assert!(out.contains("key ******** in file"), "{out}");
        assert_eq!(redact("nothing secret here"), "nothing secret here");
    }
}
