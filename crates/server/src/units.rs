//! `/units`: list, get, create or change (`PUT`), destroy.

use crate::body::{check_content_type, decode_json, read_body};
use crate::error::{empty, json_response, ApiError};
use crate::state::{in_range, next_token, page_of, token, ApiState};
use api::types;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use registry::TargetState;

/// A unit as the API shows it. fleet listed global units with `currentState` `inactive` but
/// left it out on `GET /units/<name>`; `listing` keeps that difference.
fn api_unit(v: registry::UnitView, listing: bool) -> types::Unit {
    let current_state = match v.current {
        Some(state) => state.to_string(),
        None if listing => TargetState::Inactive.to_string(),
        None => String::new(),
    };
    types::Unit {
        current_state,
        desired_state: v.unit.job.desired.to_string(),
        machine_id: v.machine.unwrap_or_default(),
        options: v
            .unit
            .file
            .options
            .iter()
            .map(types::UnitOption::from)
            .collect(),
        name: v.unit.job.name,
        reason: v.reason,
    }
}

pub(crate) async fn list(s: &ApiState, query: Option<&str>) -> Result<Response, ApiError> {
    let token = token(s, query)?;
    let (revision, all) = s
        .listing(
            "list_units",
            &s.listings.units,
            &token,
            |view| view.units(),
            |at| async move {
                let mut views = s.registry.unit_views(at).await?;
                views
                    .items
                    .sort_by(|a, b| a.unit.job.name.cmp(&b.unit.job.name));
                Ok(views)
            },
        )
        .await?;
    in_range(&token, all.len())?;
    let (units, next) = page_of(&all, &token, revision, |v| api_unit(v.clone(), true));
    Ok(json_response(
        StatusCode::OK,
        &types::UnitPage {
            units,
            next_page_token: next_token(next),
        },
    ))
}

/// 400 naming what is wrong with a unit name of a URL: no unit can have it, so a lookup would
/// only answer "does not exist" and hide the mistake.
pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    unit::UnitName::parse(name)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(crate) async fn get(s: &ApiState, name: &str) -> Result<Response, ApiError> {
    check_name(name)?;
    match s.op("get_unit", s.registry.unit_view(name)).await? {
        Some(v) => Ok(json_response(StatusCode::OK, &api_unit(v, false))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist")),
    }
}

pub(crate) async fn delete(s: &ApiState, name: &str) -> Result<Response, ApiError> {
    check_name(name)?;
    if s.op("destroy_unit", s.registry.destroy_unit(name)).await? {
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist"))
    }
}

/// fleet's `ValidateOptions` (the unit crate's [`unit::validate_unit`]): the options survive
/// normalization and their `[X-Fleet]` requirements can all hold.
pub fn validate_options(name: &str, file: &unit::UnitFile) -> Result<(), String> {
    unit::validate_unit(file, name)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A `PUT /units/<item>` body decoded and checked as far as that can be done without the
/// registry: what [`decode_put`] returns.
#[derive(Debug)]
pub struct DecodedPut {
    pub unit: types::Unit,
    pub name: unit::UnitName,
    pub desired: Option<TargetState>,
    pub file: unit::UnitFile,
}

/// Decodes the body of `PUT /units/<item>`: a JSON object (not UTF-8, an array, wrong types
/// and a name other than the URL's are refused, naming the problem), a valid unit name and a
/// valid `desiredState`. The options are checked later, and only when the request would store
/// them ([`validate_options`]).
pub fn decode_put(item: &str, body: &[u8]) -> Result<DecodedPut, ApiError> {
    // serde reads a struct from an array too (`[]` is a unit with no fields); fleet's Go
    // decoder did not, and an array here is a client's mistake to name.
    if body.trim_ascii_start().first() == Some(&b'[') {
        return Err(ApiError::bad_request(
            "unable to decode body: want a JSON object (a unit), got an array",
        ));
    }
    let mut su: types::Unit = decode_json(body)?;
    if su.name.is_empty() {
        su.name = item.to_string();
    }
    if su.name != item {
        return Err(ApiError::bad_request(format!(
            "name in URL {item:?} differs from unit name in request body {:?}",
            su.name
        )));
    }
    let name = unit::UnitName::parse(&su.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let desired = su.desired().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid desiredState {:?}: want one of inactive, loaded, launched",
            su.desired_state
        ))
    })?;
    let file = su.file();
    Ok(DecodedPut {
        unit: su,
        name,
        desired,
        file,
    })
}

pub(crate) async fn put(s: &ApiState, item: &str, req: Request) -> Result<Response, ApiError> {
    check_content_type(&req)?;
    let body = read_body(req, s.max_body_bytes).await?;
    let DecodedPut {
        unit: su,
        name,
        desired,
        file,
    } = decode_put(item, &body)?;
    let activate_template =
        name.is_template() && desired.is_some_and(|d| d != TargetState::Inactive);

    // The common case, a new unit, costs one transaction; anything else reads what exists.
    // Options are validated first, as a create would: a stored unit passed the same check.
    if !su.options.is_empty() {
        validate_options(&su.name, &file).map_err(ApiError::bad_request)?;
        if activate_template {
            return Err(ApiError::bad_request("cannot activate template"));
        }
        let created = s
            .op(
                "create_unit",
                s.registry
                    .create_unit_if_absent(&su.name, &file, desired.unwrap_or_default()),
            )
            .await?;
        if created {
            return Ok(empty(StatusCode::CREATED));
        }
    }
    let existing = s.op("get_unit", s.registry.unit(&su.name)).await?;
    let create = match &existing {
        None if su.options.is_empty() => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "unit does not exist and options field empty",
            ));
        }
        None => true,
        // Options that hash differently replace the unit (fleet's replace path).
        Some(unit) => !su.options.is_empty() && unit.job.hash != file.hash(),
    };
    if create {
        validate_options(&su.name, &file).map_err(ApiError::bad_request)?;
        if activate_template {
            return Err(ApiError::bad_request("cannot activate template"));
        }
        let desired = desired.unwrap_or_default();
        s.op(
            "create_unit",
            s.registry.create_unit(&su.name, &file, desired),
        )
        .await?;
        return Ok(empty(StatusCode::CREATED));
    }
    let Some(desired) = desired else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "must provide DesiredState to update existing unit",
        ));
    };
    if activate_template {
        return Err(ApiError::bad_request("cannot activate template"));
    }
    if s.op(
        "set_target_state",
        s.registry.set_target_state(&su.name, desired),
    )
    .await?
    {
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist"))
    }
}
