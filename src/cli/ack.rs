//! `pgsidecar ack`: records that a backup's size anomaly was expected, so prune may rotate
//! the backup before it.

use super::select::{load_catalog, select};
use super::{CliError, ExitCode};
use crate::sidecar::Sidecar;
use crate::storage::StorageError;

pub async fn run(
    sidecar: &Sidecar,
    backup: &str,
    job: Option<String>,
    db: Option<String>,
) -> Result<ExitCode, CliError> {
    let catalog = load_catalog(sidecar, job, db).await?;
    let entry = select(&catalog, backup)?;
    let key = &entry.manifest.key;
    if entry.manifest.anomalies.is_empty() {
        println!("{key} has no size anomaly; nothing to acknowledge");
        return Ok(ExitCode::Success);
    }
    let body = serde_json::json!({
        "acknowledged_at": sidecar.clock.now(),
        "anomalies": entry.manifest.anomalies,
    });
    let stored = sidecar
        .storage
        .put_bytes(
            &crate::keys::ack_key(&entry.manifest_key),
            bytes::Bytes::from(body.to_string()),
        )
        .await;
    match stored {
        Ok(()) => {
            println!("acknowledged the anomaly of {key}; prune may now rotate the backup before it")
        }
        // Stored objects are never replaced: the first acknowledgement stands.
        Err(StorageError::AlreadyExists { .. }) => {
            println!("the anomaly of {key} was already acknowledged")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::Success)
}
