//! `GET /deployment`: where `datafactory up` started this service, the
//! deployment it belongs to: each service's process, health and restarts,
//! and each GPU's memory, utilisation and temperature (NVML, opened when
//! asked). The launcher says where its state file is
//! (`DATAFACTORY_LAUNCHER_STATE`); a service started otherwise answers
//! `launched: false` and says so.
//!
//! Reads the launcher's state file and asks NVML and the services' health
//! checks; changes nothing.

use super::*;

/// `GET /deployment`.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeploymentView {
    /// Whether `datafactory up` started this service.
    pub(crate) launched: bool,
    /// Why there is no deployment to show, or what is missing from it.
    pub(crate) note: Option<String>,
    /// The deployment now (null when not launched, or when the launcher's
    /// state file is gone).
    pub(crate) status: Option<datafactory_launcher::StatusReport>,
}

/// The deployment this service belongs to: its services and GPUs.
#[utoipa::path(get, path = "/deployment", tag = "operations",
    responses((status = 200, description = "The deployment `datafactory up` started this service in, \
        or `launched: false`", body = DeploymentView)))]
pub(crate) async fn deployment(State(state): State<Shared>) -> Result<Json<DeploymentView>, ApiError> {
    let Some(path) = state.launcher_state.clone() else {
        return Ok(Json(DeploymentView {
            launched: false,
            note: Some(format!(
                "this service was not started by `datafactory up` ({} is not set): there is no deployment \
                 to show",
                datafactory_launcher::state::STATE_VAR
            )),
            status: None,
        }));
    };
    let shown = path.display().to_string();
    let report = tokio::task::spawn_blocking(move || datafactory_launcher::status_of_state(&path))
        .await
        .map_err(internal)?
        .map_err(|e| internal(format!("cannot read the launcher's state file {shown}: {e}")))?;
    let note = report.is_none().then(|| {
        format!("the launcher's state file {shown} is gone: the `datafactory up` that started this service has stopped")
    });
    Ok(Json(DeploymentView { launched: true, note, status: report }))
}
