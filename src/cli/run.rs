//! `pgsidecar run`: the daemon.

use super::ExitCode;
use crate::sidecar::Sidecar;

pub async fn run(sidecar: Sidecar) -> ExitCode {
    let cancel = crate::shutdown::on_signal();
    sidecar.ensure_lifecycle().await;
    let Sidecar {
        config,
        storage,
        copies,
        notify,
        clock,
    } = sidecar;
    ExitCode::success_if(crate::daemon::run(config, storage, copies, notify, clock, cancel).await)
}
