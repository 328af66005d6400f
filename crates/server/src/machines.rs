//! `/machines`: the cluster's machines, and `PATCH` of their metadata.

use crate::body::{decode_json, read_body};
use crate::error::{empty, json_response, ApiError};
use crate::state::{in_range, next_token, token, ApiState};
use crate::token::paginate;
use api::types;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use registry::MetadataChange;

pub(crate) async fn list(s: &ApiState, query: Option<&str>) -> Result<Response, ApiError> {
    let token = token(s, query)?;
    let read = s
        .read_pinned("list_machines", &token, |at| s.registry.machines(at))
        .await?;
    let mut machines: Vec<types::Machine> = read
        .items
        .into_iter()
        .map(|m| types::Machine {
            id: m.id,
            primary_ip: m.public_ip,
            // fleet's mergeMetadata: an empty dynamic value (a removed key) hides the key.
            metadata: m
                .metadata
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        })
        .collect();
    machines.sort_by(|a, b| a.id.cmp(&b.id));
    in_range(&token, machines.len())?;
    let (machines, next) = paginate(machines, &token, read.revision);
    Ok(json_response(
        StatusCode::OK,
        &types::MachinePage {
            machines,
            next_page_token: next_token(next),
        },
    ))
}

/// Splits `/<machineID>/metadata/<key>`; the key is `[A-Za-z0-9_.-]+` as in fleet. Neither
/// part may be `.` or `..`, and the machine ID follows fleetd's rule for its own (no `/`,
/// whitespace or control characters): both become parts of registry keys, where a `..` would
/// read as a step up to anything that treats the keys as paths.
fn metadata_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (machine, rest) = rest.split_once('/')?;
    let key = rest.strip_prefix("metadata/")?;
    let dots = |s: &str| s == "." || s == "..";
    let key_ok = !key.is_empty()
        && !dots(key)
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let machine_ok = !machine.is_empty()
        && !dots(machine)
        && !machine.chars().any(|c| c.is_whitespace() || c.is_control());
    (machine_ok && key_ok).then_some((machine, key))
}

/// Validates every operation before any is applied.
pub fn metadata_changes(ops: &[types::MachineMetadataOp]) -> Result<Vec<MetadataChange>, String> {
    if ops.len() > registry::MAX_TXN_OPS {
        return Err(format!(
            "too many operations: {} (at most {} per request)",
            ops.len(),
            registry::MAX_TXN_OPS
        ));
    }
    ops.iter()
        .map(|op| {
            if !matches!(op.op.as_str(), "add" | "remove" | "replace") {
                return Err(format!(
                    "invalid op {:?}: expect add, remove, or replace",
                    op.op
                ));
            }
            let Some((machine, key)) = metadata_path(&op.path) else {
                return Err(format!(
                    "machine metadata path invalid: {:?} (want /<machineID>/metadata/<key>)",
                    op.path
                ));
            };
            let value = match op.op.as_str() {
                // fleet removes by setting "", which hides configured metadata too.
                "remove" => String::new(),
                _ => match op.value.as_ref().map(types::MetadataValue::as_str) {
                    Some(v) if !v.is_empty() => v.to_string(),
                    _ => {
                        return Err(format!(
                            "invalid value for {:?}: add and replace require a value",
                            op.path
                        ))
                    }
                },
            };
            Ok(MetadataChange {
                machine: machine.to_string(),
                key: key.to_string(),
                value: Some(value),
            })
        })
        .collect()
}

/// Decodes and validates the body of `PATCH /machines` into the changes to make, all or none.
pub fn decode_patch(body: &[u8]) -> Result<Vec<MetadataChange>, ApiError> {
    let ops: Vec<types::MachineMetadataOp> = decode_json(body)?;
    metadata_changes(&ops).map_err(ApiError::bad_request)
}

pub(crate) async fn patch(s: &ApiState, req: Request) -> Result<Response, ApiError> {
    let body = read_body(req, s.max_body_bytes).await?;
    let changes = decode_patch(&body)?;
    if !changes.is_empty() {
        s.op("set_metadata", s.registry.set_metadata(&changes))
            .await?;
    }
    let mut resp = empty(StatusCode::NO_CONTENT);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_paths() {
        assert_eq!(metadata_path("/m1/metadata/region"), Some(("m1", "region")));
        assert_eq!(
            metadata_path("/m1/metadata/a.b-c_d"),
            Some(("m1", "a.b-c_d"))
        );
        for bad in [
            "",
            "/",
            "m1/metadata/k",
            "//metadata/k",
            "/m1/metadata/",
            "/m1/metadata/k/x",
            "/m1/meta/k",
            "/m1/metadata/k!",
            "/../metadata/k",
            "/./metadata/k",
            "/m1/metadata/..",
            "/m1/metadata/.",
            "/../../etc/metadata/k",
            "/m1/metadata/../k",
            "/m 1/metadata/k",
            "/m\u{0}1/metadata/k",
        ] {
            assert_eq!(metadata_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn metadata_ops_are_all_validated_first() {
        let ok = types::MachineMetadataOp::set("m", "k", "v");
        let bad = types::MachineMetadataOp {
            op: "move".into(),
            ..ok.clone()
        };
        assert!(metadata_changes(&[ok.clone(), bad])
            .unwrap_err()
            .contains("move"));
        let empty = types::MachineMetadataOp {
            value: Some(types::MetadataValue::Plain(String::new())),
            ..ok.clone()
        };
        assert!(metadata_changes(&[empty]).is_err());
        let missing = types::MachineMetadataOp {
            op: "replace".into(),
            value: None,
            ..ok.clone()
        };
        assert!(metadata_changes(&[missing]).is_err());
        let changes = metadata_changes(&[ok, types::MachineMetadataOp::remove("m", "x")]).unwrap();
        assert_eq!(changes[0].value.as_deref(), Some("v"));
        assert_eq!(changes[1].value.as_deref(), Some(""));
    }
}
