//! The one place errors become responses: `{"error": "<what is wrong>"}` with
//! the status that says whose fault it is. Bad input is never a 500.

use std::borrow::Cow;

use hyper::header::{ALLOW, HeaderValue};
use hyper::{Response, StatusCode};

use super::{Body, json_response};
use crate::broker::{BrokerError, ProcessRefusal};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: Cow<'static, str>,
    /// For 405: the methods the route does take.
    pub allow: Option<&'static str>,
    /// A whole body to send instead of `{"error": message}`, for APIs whose
    /// clients expect their own error shape.
    pub body: Option<serde_json::Value>,
    /// For 401: the `WWW-Authenticate` challenge.
    pub www_authenticate: Option<HeaderValue>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            message: message.into(),
            allow: None,
            body: None,
            www_authenticate: None,
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

    /// An unsupported media type (415). The request's content type is not
    /// repeated back: an answer never echoes a request header (it may be
    /// huge, or a script).
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type; send application/json, \
             application/x-www-form-urlencoded or multipart/form-data",
        )
    }

    /// 408: the body did not arrive in time; the connection is closed.
    pub fn body_timeout(secs: u64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {secs} s"),
        )
    }

    pub fn unprocessable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn with_body(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn into_response(self) -> Response<Body> {
        let body = self
            .body
            .unwrap_or_else(|| serde_json::json!({ "error": self.message }));
        let mut response = json_response(self.status, &body);
        if let Some(challenge) = self.www_authenticate {
            response
                .headers_mut()
                .insert(hyper::header::WWW_AUTHENTICATE, challenge);
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            response
                .headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// The body of every error but the Order Status API's and auth's:
/// `error` says what is wrong; some errors add what they are about.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // the description of what `into_response` writes
pub struct ErrorBody {
    error: String,
    /// A machine-readable reason (ids_exhausted, insufficient_balance, ...).
    reason: Option<String>,
    /// The field out of range (422).
    field: Option<String>,
    /// The record's current version (412).
    version: Option<u32>,
    /// The index of the bad item (422).
    item: Option<usize>,
    /// The items short of stock (400).
    items: Option<Vec<crate::shop::Shortage>>,
    /// The order as it is, for a wait that can never be met (409).
    #[schema(value_type = Option<Object>)]
    order: Option<serde_json::Value>,
}

/// Auth's error body (401, 403), as the FastAPI seed writes it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // the description of `access::unauthorized` and `forbidden`
pub struct Denied {
    detail: String,
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        use serde_json::json;
        let message = e.to_string();
        match e {
            BrokerError::OrderNotFound
            | BrokerError::TemplateNotFound
            | BrokerError::ProductNotFound(_)
            | BrokerError::CustomerNotFound(_) => ApiError::not_found(message),
            BrokerError::IdTaken(_) | BrokerError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, message)
            }
            BrokerError::IdsExhausted(_) => ApiError::new(StatusCode::CONFLICT, message.clone())
                .with_body(json!({ "error": message, "reason": "ids_exhausted" })),
            BrokerError::OutOfRange { field, .. } => ApiError::unprocessable(message.clone())
                .with_body(json!({ "error": message, "field": field })),
            BrokerError::VersionMismatch { current } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, message.clone())
                    .with_body(json!({ "error": message, "version": current }))
            }
            BrokerError::InvalidItem { index, .. } => ApiError::unprocessable(message.clone())
                .with_body(json!({ "error": message, "item": index })),
            BrokerError::OutOfStock(short) => ApiError::bad_request(message.clone())
                .with_body(json!({ "error": message, "items": short })),
            BrokerError::ProcessRefused(why) => {
                let (reason, items) = match why {
                    ProcessRefusal::AlreadyProcessed => ("already_processed", None),
                    ProcessRefusal::Balance => ("insufficient_balance", None),
                    ProcessRefusal::NoCustomer => ("no_customer", None),
                    ProcessRefusal::Cancelled => ("cancelled", None),
                    ProcessRefusal::Rejected(short) => ("rejected", Some(short)),
                };
                let mut body = json!({ "error": message, "reason": reason });
                if let Some(items) = items {
                    body["items"] = json!(items);
                }
                ApiError::bad_request(message).with_body(body)
            }
            BrokerError::Lifecycle(_) => ApiError::bad_request(message),
            BrokerError::NotAssigned => ApiError::new(StatusCode::FORBIDDEN, message),
            BrokerError::TextTooLong { .. }
            | BrokerError::TooManySymbols { .. }
            | BrokerError::VersionExhausted
            | BrokerError::Invalid(_) => ApiError::unprocessable(message),
        }
    }
}
