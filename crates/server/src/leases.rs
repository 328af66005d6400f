//! `/fleet/v1/leases`: each present machine's presence lease, so that the dashboard can show
//! how recently each machine renewed it. An extension beside fleet's resources, not in the
//! discovery document; fleet's machine entity is left as it is.

use crate::error::{json_response, ApiError};
use crate::state::ApiState;
use api::types;
use axum::http::StatusCode;
use axum::response::Response;

/// `GET /leases`.
pub(crate) async fn list(s: &ApiState) -> Result<Response, ApiError> {
    let leases = s.op("machine_leases", s.registry.machine_leases()).await?;
    let machines = leases
        .into_iter()
        .map(|(machine_id, t)| types::MachineLease {
            machine_id,
            remaining: t.remaining.as_secs_f64(),
            granted: t.granted.map(|g| g.as_secs_f64()),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &types::LeasePage { machines },
    ))
}
