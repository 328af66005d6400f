//! `/fleet/v1/plan` and `/fleet/v1/why/<unit>`: where units would go and why, from one
//! scheduling pass ([`engine::explain`]) over a snapshot read here through the registry's typed
//! operations, so any fleetd answers, leader or not. Nothing is written.
//!
//! An answer is advisory: the leader decides on its own snapshot moments later, and a machine
//! leaving or a unit started in between changes the outcome.
//!
//! These are extensions beside fleet's resources (fleet's own are unchanged, and fleet's Go
//! client never asks for them), so they are not in the discovery document.

use crate::body::{check_content_type, decode_json, read_body};
use crate::error::{json_response, ApiError};
use crate::state::ApiState;
use crate::units::{check_name, validate_options};
use api::types;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use engine::explain::{explain, Explanation};
use engine::model::Model;
use engine::scheduler::{Cluster, ClusterUnit};
use registry::{ScheduleEntry, TargetState};

/// `GET /plan?unit=NAME&unit=NAME`.
pub(crate) async fn get(s: &ApiState, query: Option<&str>) -> Result<Response, ApiError> {
    let mut units = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key != "unit" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {key:?}: name units as ?unit=NAME&unit=NAME"
            )));
        }
        units.push(value.into_owned());
    }
    answer(
        s,
        types::PlanRequest {
            units,
            files: Vec::new(),
        },
    )
    .await
}

/// `POST /plan` with a [`types::PlanRequest`]: units by name and unit files not submitted.
pub(crate) async fn post(s: &ApiState, req: Request) -> Result<Response, ApiError> {
    check_content_type(&req)?;
    let body = read_body(req, s.max_body_bytes).await?;
    let request: types::PlanRequest = decode_json(&body)?;
    answer(s, request).await
}

/// `GET /why/<unit>`.
pub(crate) async fn why(s: &ApiState, name: &str) -> Result<Response, ApiError> {
    check_name(name)?;
    answer(
        s,
        types::PlanRequest {
            units: vec![name.to_string()],
            files: Vec::new(),
        },
    )
    .await
}

async fn answer(s: &ApiState, request: types::PlanRequest) -> Result<Response, ApiError> {
    if request.units.is_empty() && request.files.is_empty() {
        return Err(ApiError::bad_request(
            "no unit to plan: name units (?unit=NAME) or give unit files",
        ));
    }
    for name in &request.units {
        check_name(name)?;
    }
    let mut cluster = snapshot(s).await?;
    let mut names = request.units;
    for file in request.files {
        let unit = hypothetical(file)?;
        names.push(unit.name.clone());
        cluster.with_unit(unit);
    }
    match explain(&cluster, &names) {
        Ok(e) => Ok(json_response(StatusCode::OK, &to_wire(e))),
        Err(unknown) => Err(ApiError::new(StatusCode::NOT_FOUND, unknown.to_string())),
    }
}

/// A unit file of the request as the scheduler would see it once submitted (`launched` when
/// the request gives no state: what `fleetctl start` asks for).
fn hypothetical(su: types::Unit) -> Result<ClusterUnit, ApiError> {
    check_name(&su.name)?;
    if su.options.is_empty() {
        return Err(ApiError::bad_request(format!(
            "unit file {} has no options: give its contents, or name it to plan it as it is",
            su.name
        )));
    }
    let desired = su
        .desired()
        .map_err(|_| {
            ApiError::bad_request(format!(
                "invalid desiredState {:?} of {}: want one of inactive, loaded, launched",
                su.desired_state, su.name
            ))
        })?
        .unwrap_or(TargetState::Launched);
    let file = su.file();
    validate_options(&su.name, &file)
        .map_err(|e| ApiError::bad_request(format!("{}: {e}", su.name)))?;
    let requirements = unit::Requirements::from_unit(&file, &su.name);
    Ok(ClusterUnit::new(su.name, desired, requirements))
}

/// The scheduler's snapshot at one revision, built as the leader builds its own
/// ([`Model::cluster`]).
async fn snapshot(s: &ApiState) -> Result<Cluster, ApiError> {
    Ok(snapshot_model(s).await?.cluster())
}

/// The model [`snapshot`] is built from, as the leader's would be after reading everything.
pub(crate) async fn snapshot_model(s: &ApiState) -> Result<Model, ApiError> {
    let jobs = s.op("list_jobs", s.registry.jobs(None)).await?;
    let at = Some(jobs.revision);
    let machines = s.op("list_machines", s.registry.machines(at)).await?;
    let placements = s.op("list_placements", s.registry.placements(at)).await?;
    let mut model = Model::new();
    model.jobs = jobs
        .items
        .into_iter()
        .map(|j| (j.name.clone(), j))
        .collect();
    model.machines = machines
        .items
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
    for (unit, machine) in placements.items {
        // The model keys placements by unit with the entry the machine was told; only the
        // machine matters to the scheduler.
        if let Some(job) = model.jobs.get(&unit) {
            let entry = ScheduleEntry {
                hash: job.hash,
                desired: job.desired,
                raw: None,
            };
            model.placed.insert(unit, (machine, entry));
        }
    }
    // Drain marks are not under leases, so no revision ties them to the rest; a mark set or
    // taken away in between shows in the next answer.
    model.drains = s.op("list_drains", s.registry.drains()).await?;
    let mut read = Vec::new();
    for hash in model.missing_bodies() {
        let body = s.op("get_body", s.registry.body(&hash, at)).await?;
        read.push((hash, Ok(body)));
    }
    model.take_bodies(read);
    Ok(model)
}

fn to_wire(e: Explanation) -> types::PlanAnswer {
    types::PlanAnswer {
        units: e
            .units
            .into_iter()
            .map(|u| types::UnitPlan {
                name: u.name,
                global: u.global,
                action: u.action.word().to_string(),
                machine_before: u.before.unwrap_or_default(),
                machine_id: u.after.unwrap_or_default(),
                reason: u.reason,
                machines: u
                    .machines
                    .into_iter()
                    .map(|v| types::MachineVerdict {
                        machine_id: v.machine,
                        fits: v.fits,
                        verdict: v.verdict,
                    })
                    .collect(),
            })
            .collect(),
        moves: e
            .moves
            .into_iter()
            .map(|m| types::PlanMove {
                unit: m.unit,
                from: m.from.unwrap_or_default(),
                to: m.to.unwrap_or_default(),
            })
            .collect(),
    }
}
