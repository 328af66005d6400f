//! `/state`: the states agents publish, listed (optionally filtered) or read for one unit.

use crate::error::{json_response, ApiError};
use crate::state::{in_range, next_token, page_of, token, ApiState};
use api::types;
use axum::http::StatusCode;
use axum::response::Response;
use std::sync::Arc;

fn api_state(s: &registry::UnitState) -> types::UnitState {
    types::UnitState {
        hash: s.hash.to_string(),
        machine_id: s.machine_id.clone(),
        name: s.name.clone(),
        systemd_active_state: s.systemd.active.clone(),
        systemd_load_state: s.systemd.load.clone(),
        systemd_sub_state: s.systemd.sub.clone(),
        reason: s.reason.clone(),
    }
}

pub(crate) async fn list(s: &ApiState, query: Option<&str>) -> Result<Response, ApiError> {
    let token = token(s, query)?;
    // Go's `Query().Get`: the first value of each filter; empty means no filter.
    let first = |key: &str| {
        form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    };
    let (machine, unit) = (first("machineID"), first("unitName"));
    let (revision, all) = s
        .listing(
            "list_unit_states",
            &s.listings.states,
            &token,
            |view| view.states(),
            |at| async move {
                let read = s.registry.unit_states(at).await?;
                let mut states: Vec<Arc<registry::UnitState>> =
                    read.items.into_iter().map(Arc::new).collect();
                states.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
                Ok(registry::AtRevision {
                    items: states,
                    revision: read.revision,
                })
            },
        )
        .await?;
    let (states, next) = if machine.is_none() && unit.is_none() {
        in_range(&token, all.len())?;
        page_of(&all, &token, revision, |st| api_state(st))
    } else {
        let filtered: Vec<&Arc<registry::UnitState>> = all
            .iter()
            .filter(|st| machine.as_deref().is_none_or(|m| st.machine_id == m))
            .filter(|st| unit.as_deref().is_none_or(|u| st.name == u))
            .collect();
        in_range(&token, filtered.len())?;
        page_of(&filtered, &token, revision, |st| api_state(st))
    };
    Ok(json_response(
        StatusCode::OK,
        &types::UnitStatePage {
            states,
            next_page_token: next_token(next),
        },
    ))
}

pub(crate) async fn get(s: &ApiState, name: &str) -> Result<Response, ApiError> {
    crate::units::check_name(name)?;
    let states = s
        .op("states_of_unit", s.registry.states_of_unit(name))
        .await?;
    match states.first() {
        Some(state) => Ok(json_response(StatusCode::OK, &api_state(state))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unit state does not exist",
        )),
    }
}
