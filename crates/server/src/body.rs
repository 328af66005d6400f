//! Request bodies: fleet's content-type rule and the size limit.

use crate::error::ApiError;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// Decodes a JSON request body, naming what is wrong with it: bytes that are not UTF-8 (with
/// their offset), then serde's own message (wrong type, nesting deeper than serde_json's
/// recursion limit of 128, a number out of range, a duplicate field), each with line and column.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::bad_request(format!(
            "unable to decode body: not valid UTF-8 at byte {}; send JSON text in UTF-8",
            e.valid_up_to()
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("unable to decode body: {e}")))
}

/// Request bodies larger than this are refused with 413 (unless
/// [`crate::ApiState::with_max_body_bytes`] says otherwise). 1 MiB: the largest body the API
/// takes is one unit, and real units are a few KB; etcd, fleet's registry, refuses requests
/// over 1.5 MiB by default, so fleet never stored more either. It bounds what one request makes
/// fleetd hold in memory and parse before any other check.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// fleet's content-type rule: exactly one `Content-Type` whose media type is
/// `application/json` (parameters allowed).
pub(crate) fn check_content_type(req: &Request) -> Result<(), ApiError> {
    let values: Vec<&HeaderValue> = req.headers().get_all(header::CONTENT_TYPE).iter().collect();
    let [value] = values.as_slice() else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "expected 1 Content-Type, got {}; send Content-Type: application/json",
                values.len()
            ),
        ));
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only acceptable Content-Type is application/json",
        ));
    }
    Ok(())
}

/// Reads a request body of at most `limit` bytes; more is refused with 413.
pub(crate) async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("unable to read body: {e}"))),
    }
}
