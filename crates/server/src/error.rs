//! Error answers and JSON responses shared by every resource.

use api::types;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use registry::{RegistryError, StoreError};

/// An error response: `{"error":{"code":N,"message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A failed registry call: 503 when the store cannot be reached (fleet's wording first),
    /// 500 otherwise; both say which operation failed and why.
    pub(crate) fn registry(op: &str, e: RegistryError) -> ApiError {
        let what = op.replace('_', " ");
        match &e {
            RegistryError::Store(StoreError::Unavailable(_)) => {
                tracing::warn!(operation = op, error = %e, "registry unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("fleet server unable to communicate with etcd: {what}: {e}"),
                )
            }
            _ => {
                tracing::error!(operation = op, error = %e, "registry operation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("registry failure in {what}: {e}"),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = types::ErrorBody {
            error: types::ErrorContent {
                code: self.status.as_u16(),
                message: self.message,
            },
        };
        json_response(self.status, &body)
    }
}

pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            // Our own plain types always serialize; this is for completeness, not expected.
            tracing::error!(error = %e, "encoding a response failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub(crate) fn empty(status: StatusCode) -> Response {
    status.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_failures_map_to_503_or_500_with_the_cause() {
        let e = ApiError::registry(
            "list_units",
            RegistryError::Store(StoreError::Unavailable(
                "no etcd at http://127.0.0.1:2379".into(),
            )),
        );
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            e.message
                .starts_with("fleet server unable to communicate with etcd: list units: "),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("no etcd at http://127.0.0.1:2379"),
            "{}",
            e.message
        );
        let e = ApiError::registry(
            "get_unit",
            RegistryError::Corrupt {
                key: "/k".into(),
                message: "bad json".into(),
            },
        );
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            e.message.contains("get unit") && e.message.contains("bad json"),
            "{}",
            e.message
        );
    }
}
