//! `GET /fleet/v1/output/<unit>?lines=N`: the recent output of a unit that this machine's
//! process supervisor runs (an extension beside fleet's resources; read role).
//!
//! The output stays on the machine that ran the unit (the supervisor's log files), so only that
//! machine's fleetd can answer with it; any other answers 404 naming the machine that runs the
//! unit, so the dashboard and scripts know where to ask. systemd's units have their output in
//! the journal, which `fleetctl journal` reads.

use crate::error::{json_response, ApiError};
use crate::units::check_name;
use crate::ApiState;
use axum::http::StatusCode;
use axum::response::Response;
use std::sync::Arc;

/// Reads the last `n` lines a unit printed, `None` when this machine keeps no output of it.
/// Given by fleetd when its unit manager is the process supervisor; may block on the disk.
pub type OutputSource = Arc<dyn Fn(&str, usize) -> Option<Vec<String>> + Send + Sync>;

/// Lines sent when the request does not say; at most [`MAX_LINES`].
const DEFAULT_LINES: usize = 100;
const MAX_LINES: usize = 5000;

pub(crate) async fn get(
    s: &ApiState,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    check_name(name)?;
    let lines = lines_wanted(query)?;
    if let Some(source) = s.output.clone() {
        let unit = name.to_string();
        let read = tokio::task::spawn_blocking(move || source(&unit, lines))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Some(lines) = read {
            let body = api::types::UnitOutput {
                unit: name.to_string(),
                lines,
            };
            return Ok(json_response(StatusCode::OK, &body));
        }
    }
    let view = s.op("get_unit", s.registry.unit_view(name)).await?;
    let message = match view {
        None => "unit does not exist".to_string(),
        Some(v) => match v.machine {
            Some(machine) => format!(
                "this machine keeps no output of {name}: it runs on machine {machine}, whose \
                 fleetd has it (GET /fleet/v1/output/{name} there, or `fleetctl journal {name}`)"
            ),
            None => format!(
                "this machine keeps no output of {name}: it is not placed on a machine of the \
                 process supervisor here (for systemd's units: `fleetctl journal {name}`)"
            ),
        },
    };
    Err(ApiError::new(StatusCode::NOT_FOUND, message))
}

/// `lines=N` of the query: 1 to [`MAX_LINES`].
fn lines_wanted(query: Option<&str>) -> Result<usize, ApiError> {
    let Some(value) = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "lines")
        .map(|(_, v)| v.into_owned())
    else {
        return Ok(DEFAULT_LINES);
    };
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_LINES).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "lines={value:?}: give a number of lines from 1 to {MAX_LINES}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_a_bounded_number() {
        assert_eq!(lines_wanted(None).ok(), Some(DEFAULT_LINES));
        assert_eq!(lines_wanted(Some("lines=7")).ok(), Some(7));
        assert_eq!(lines_wanted(Some("x=1&lines=5000")).ok(), Some(5000));
        for bad in ["lines=0", "lines=5001", "lines=-1", "lines=many"] {
            assert!(lines_wanted(Some(bad)).is_err(), "{bad}");
        }
    }
}
