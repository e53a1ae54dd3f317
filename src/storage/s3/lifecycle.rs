//! Storage stage, S3 bucket lifecycle rules. Invariant kept: the rules are edited, never
//! replaced: rules the sidecar does not own (by ID) survive, in their place, and nothing is
//! written when the sidecar's own rules are already as configured.

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus,
    LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, Transition, TransitionStorageClass,
};

use super::error::{denied, not_implemented, service_code};
use super::S3Storage;
use crate::storage::{Lifecycle, LifecycleChange, StorageError};

impl S3Storage {
    /// Edits the bucket's lifecycle rules so the sidecar's own are as `lifecycle` asks.
    pub(super) async fn edit_lifecycle(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
