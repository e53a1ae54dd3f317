//! Storage stage, S3 errors: turns SDK errors into [`StorageError`] with named causes.
//! Invariant kept: every failure names the bucket or key and the operation; a refusal names
//! the missing permission (bad credentials stay a credentials error); a message is one
//! readable line, never the SDK's debug structure.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::S3Storage;
use crate::storage::StorageError;

impl S3Storage {
    pub(super) fn map_err<E>(
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
}

/// Turns a refusal into [`StorageError::Denied`] naming `action`, so the caller can report
/// the missing permission; bad credentials stay [`StorageError::AccessDenied`].
pub(super) fn denied(bucket: &str, action: &'static str, err: StorageError) -> StorageError {
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
pub(super) fn service_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.as_service_error().and_then(|e| e.code())
}

/// Whether a conditional write was refused because its condition failed: with
/// `If-None-Match: *`, an object already exists under the key. Some stores answer a completion
/// 200 with the error in the body, hence the code as well as the status.
pub(super) fn precondition_failed<E: ProvideErrorMetadata>(
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
pub(super) fn not_implemented<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match err {
        SdkError::ServiceError(se) => {
            se.raw().status().as_u16() == 501 || se.err().code() == Some("NotImplemented")
        }
        _ => false,
    }
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
