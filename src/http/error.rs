//! The one place errors become responses: `{"error": "<what is wrong>"}` with
//! the status that says whose fault it is. Bad input is never a 500.

use std::borrow::Cow;

use hyper::header::{ALLOW, HeaderValue};
use hyper::{Response, StatusCode};

use super::{Body, json_response};
use crate::broker::BrokerError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: Cow<'static, str>,
    /// For 405: the methods the route does take.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            message: message.into(),
            allow: None,
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The seed's answer for an update without an id or a status.
    pub fn missing_data() -> Self {
        Self::bad_request("Missing data")
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported content type {content_type:?}; send application/json, \
                 application/x-www-form-urlencoded or multipart/form-data"
            ),
        )
    }

    pub fn unprocessable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response =
            json_response(self.status, &serde_json::json!({ "error": self.message }));
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        ApiError::unprocessable(e.to_string())
    }
}
