//! The REST gateway's one error shape, and the HTTP code of each gRPC code.
//!
//! Every error the gateway answers, whether a handler's `tonic::Status` or
//! the gateway's own refusal (a malformed body, an unknown route), is
//!
//! ```json
//! {"error": {"code": 404, "status": "NOT_FOUND", "message": "job \"a\" not found"}}
//! ```
//!
//! with `code` the HTTP status and `status` the gRPC code's name, mapped as
//! Google's HTTP mapping does ([`http_code`]). An `UNAVAILABLE` that names
//! the leader (the `x-kairos-leader` metadata of a follower's refusal)
//! carries it as the `x-kairos-leader` response header.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

use crate::api::LEADER_HEADER;

/// An error answered in the gateway's shape.
#[derive(Debug)]
pub struct RestError {
    pub code: Code,
    pub message: String,
    /// The leader's address, for `UNAVAILABLE`.
    pub leader: Option<String>,
}

impl RestError {
    /// `INVALID_ARGUMENT` with `message`.
    pub fn invalid(message: impl Into<String>) -> RestError {
        RestError {
            code: Code::InvalidArgument,
            message: message.into(),
            leader: None,
        }
    }

    /// `NOT_FOUND` with `message`.
    pub fn not_found(message: impl Into<String>) -> RestError {
        RestError {
            code: Code::NotFound,
            message: message.into(),
            leader: None,
        }
    }

    /// The error's JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": http_code(self.code).as_u16(),
                "status": status_name(self.code),
                "message": self.message,
            }
        })
    }
}

impl From<Status> for RestError {
    fn from(status: Status) -> RestError {
        let leader = status
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        RestError {
            code: status.code(),
            message: status.message().to_string(),
            leader,
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut response = (http_code(self.code), axum::Json(self.body())).into_response();
        if let Some(leader) = self.leader.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(LEADER_HEADER), leader);
        }
        response
    }
}

/// The HTTP status of a gRPC code (Google's mapping).
pub fn http_code(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request (nginx's), as Google maps CANCELLED.
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Every gRPC code but `OK`, for the OpenAPI document.
pub const ERROR_CODES: [Code; 16] = [
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// The canonical name of a gRPC code (`NOT_FOUND`).
pub fn status_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_as_google_maps_them() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
        ];
        for (code, http) in cases {
            assert_eq!(http_code(code).as_u16(), http, "{code:?}");
        }
        assert_eq!(ERROR_CODES.len(), cases.len());
    }

    #[test]
    fn an_unavailable_with_a_leader_names_it_in_a_header() {
        let mut status = Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert(LEADER_HEADER, "127.0.0.1:7101".parse().unwrap());
        let response = RestError::from(status).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[LEADER_HEADER], "127.0.0.1:7101");
    }

    #[test]
    fn the_body_has_the_http_code_the_status_name_and_the_message() {
        let body = RestError::not_found("job \"a\" not found").body();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "job \"a\" not found"}})
        );
    }
}
