//! `/fleet/v1/rollouts/<unit>`: rolling replaces of global units (an extension beside fleet's
//! resources, not in the discovery document). A rollout names a global unit's old and new
//! content and the machines allowed the new one; the agents of the other machines keep the
//! old content while the unit's job names the new one (see `registry::GlobalRollout`).
//! `fleetctl start --replace --rolling` drives it: `PUT` with no machine allowed, then the
//! unit's new content, then `PUT`s allowing machines a few at a time, then `DELETE`.

use crate::body::{check_content_type, decode_json, read_body};
use crate::error::{empty, json_response, ApiError};
use crate::state::ApiState;
use api::types;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use registry::{GlobalRollout, RolloutWrite};
use unit::UnitHash;

fn shown(unit: &str, r: &GlobalRollout) -> types::GlobalRollout {
    types::GlobalRollout {
        name: unit.to_string(),
        old_hash: r.old.to_string(),
        new_hash: r.new.to_string(),
        allowed_machines: r.allowed.iter().cloned().collect(),
    }
}

fn no_rollout(unit: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no rollout of {unit:?} in progress (fleetctl start --replace --rolling starts one for a global unit)"),
    )
}

/// `GET /rollouts/<unit>`.
pub(crate) async fn get(s: &ApiState, unit: &str) -> Result<Response, ApiError> {
    match s.op("get_rollout", s.registry.rollout(unit)).await? {
        Some(r) => Ok(json_response(StatusCode::OK, &shown(unit, &r))),
        None => Err(no_rollout(unit)),
    }
}

fn hash(field: &str, value: &str) -> Result<UnitHash, ApiError> {
    value.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "{field} {value:?} is not a unit hash ({e}): give the 40 hex digits fleetctl cat's content hashes to (as GET /fleet/v1/state shows them)"
        ))
    })
}

/// `PUT /rollouts/<unit>`: 201 when created, 200 when changed. The unit must be a global unit
/// in the registry, and its old content stored (it is, as long as the unit or a rollout uses
/// it).
pub(crate) async fn put(s: &ApiState, unit: &str, req: Request) -> Result<Response, ApiError> {
    check_content_type(&req)?;
    let body = read_body(req, s.max_body_bytes).await?;
    let asked: types::GlobalRollout = decode_json(&body)?;
    let rollout = GlobalRollout {
        old: hash("oldHash", &asked.old_hash)?,
        new: hash("newHash", &asked.new_hash)?,
        allowed: asked.allowed_machines.into_iter().collect(),
    };
    let Some(existing) = s.op("get_unit", s.registry.unit(unit)).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unit {unit:?} not found: a rollout replaces a global unit that exists"),
        ));
    };
    if !existing.job.global {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{unit} is not a global unit: a rollout holds back the machines of a global unit; roll other units with fleetctl start --replace --rolling"),
        ));
    }
    let written = s
        .op("put_rollout", s.registry.put_rollout(unit, &rollout))
        .await?;
    let status = match written {
        RolloutWrite::Created => {
            tracing::info!(unit, old = %rollout.old, new = %rollout.new, "rollout started");
            StatusCode::CREATED
        }
        RolloutWrite::Updated => StatusCode::OK,
        RolloutWrite::OldBodyMissing => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the old content {} of {unit} is not stored (no unit uses it any more), so no machine can be kept on it; start a rollout from the content the unit has now",
                    rollout.old
                ),
            ))
        }
    };
    Ok(json_response(status, &shown(unit, &rollout)))
}

/// `DELETE /rollouts/<unit>`.
pub(crate) async fn delete(s: &ApiState, unit: &str) -> Result<Response, ApiError> {
    if s.op("delete_rollout", s.registry.delete_rollout(unit))
        .await?
    {
        tracing::info!(unit, "rollout dropped");
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(no_rollout(unit))
    }
}
