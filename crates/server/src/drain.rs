//! `/fleet/v1/drain`: draining machines (an extension beside fleet's resources, not in the
//! discovery document; fleet's machine entity is left as it is). `PUT /drain/<machineID>`
//! marks a machine drained (admin role), `DELETE` returns it to service, `GET /drain` and
//! `GET /drain/<machineID>` tell what becomes of each drained machine's units, from the
//! scheduler's own pass over a snapshot read here ([`engine::scheduler::drain_report`]).
//!
//! The report is advisory, as `plan` is: the leader moves units on its own snapshot, and
//! only the leader knows which unit is in motion, so `moves` names the unit whose turn it is.

use crate::error::{empty, json_response, ApiError};
use crate::plan::snapshot_model;
use crate::state::ApiState;
use api::types;
use axum::http::StatusCode;
use axum::response::Response;
use engine::scheduler::{drain_report, DrainStatus};
use registry::DrainMark;
use std::collections::BTreeMap;

/// `GET /drain`.
pub(crate) async fn list(s: &ApiState) -> Result<Response, ApiError> {
    let machines = report(s, None).await?;
    Ok(json_response(
        StatusCode::OK,
        &types::DrainPage { machines },
    ))
}

/// `GET /drain/<machineID>`.
pub(crate) async fn get(s: &ApiState, machine: &str) -> Result<Response, ApiError> {
    match report(s, Some(machine)).await?.pop() {
        Some(m) => Ok(json_response(StatusCode::OK, &m)),
        None => Err(not_drained(machine)),
    }
}

/// `PUT /drain/<machineID>`: 201 when the machine was drained now, 200 when it already was.
pub(crate) async fn put(s: &ApiState, machine: &str) -> Result<Response, ApiError> {
    let present = s.op("list_machines", s.registry.machines(None)).await?;
    if !present.items.iter().any(|m| m.id == machine) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "machine {machine:?} not found: drain takes the full id of a machine in the cluster (fleetctl list-machines -l lists them)"
            ),
        ));
    }
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let created = s
        .op(
            "drain_machine",
            s.registry.drain_machine(machine, &DrainMark { since }),
        )
        .await?;
    let status = if created {
        tracing::info!(machine, "machine drained");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    match report(s, Some(machine)).await?.pop() {
        Some(m) => Ok(json_response(status, &m)),
        // Undrained between the write and the read: say so rather than report a stale state.
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("machine {machine} was undrained while being drained; drain it again if it should be"),
        )),
    }
}

/// `DELETE /drain/<machineID>`.
pub(crate) async fn delete(s: &ApiState, machine: &str) -> Result<Response, ApiError> {
    if s.op("undrain_machine", s.registry.undrain_machine(machine))
        .await?
    {
        tracing::info!(machine, "machine undrained");
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(not_drained(machine))
    }
}

fn not_drained(machine: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "machine {machine:?} is not drained (GET /fleet/v1/drain lists the drained machines)"
        ),
    )
}

/// The drained machines (or the one named) with their units, from one pass over a snapshot.
async fn report(s: &ApiState, only: Option<&str>) -> Result<Vec<types::DrainedMachine>, ApiError> {
    let model = snapshot_model(s).await?;
    let mut marks = model.drains.clone();
    if let Some(id) = only {
        marks.retain(|m, _| m == id);
    }
    if marks.is_empty() {
        return Ok(Vec::new());
    }
    let cluster = model.cluster();
    let mut units: BTreeMap<String, Vec<types::DrainedUnit>> = BTreeMap::new();
    for r in drain_report(&cluster) {
        let (status, machine_id, reason) = match r.status {
            DrainStatus::Moves(to) => ("moves", to, String::new()),
            DrainStatus::Waits => ("waits", String::new(), String::new()),
            DrainStatus::Stays(why) => ("stays", String::new(), why),
        };
        units
            .entry(r.machine)
            .or_default()
            .push(types::DrainedUnit {
                name: r.unit,
                status: status.to_string(),
                machine_id,
                reason,
            });
    }
    Ok(marks
        .into_iter()
        .map(|(id, mark)| types::DrainedMachine {
            present: cluster.machines.iter().any(|m| m.id == id),
            units: units.remove(&id).unwrap_or_default(),
            machine_id: id,
            since: mark.since,
        })
        .collect())
}
