//! Request bodies: read with a size limit, then parsed by content type into
//! [`Fields`], one flat name → value view over JSON objects, url-encoded
//! forms and multipart forms (what process engines such as CPEE send).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use serde_json::{Map, Value};

use super::error::ApiError;

/// One field of a body: form and multipart fields are always text, JSON
/// fields keep their type.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    Text(&'a str),
    Json(&'a Value),
}

impl<'a> Field<'a> {
    /// The text of a form field or a JSON string; None for other JSON types.
    pub fn text(self) -> Option<&'a str> {
        match self {
            Field::Text(t) => Some(t),
            Field::Json(Value::String(s)) => Some(s),
            Field::Json(_) => None,
        }
    }
}

#[derive(Debug)]
pub enum Fields {
    Json(Map<String, Value>),
    Text(Vec<(String, String)>),
}

impl Fields {
    /// The first field called `name`.
    pub fn get(&self, name: &str) -> Option<Field<'_>> {
        match self {
            Fields::Json(map) => map.get(name).map(Field::Json),
            Fields::Text(pairs) => pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Field::Text(v)),
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes with 413 (before
/// reading, when `Content-Length` already says so) and a body that takes
/// longer than `deadline` with 408. Each chunk is copied into one buffer and
/// dropped at once, so a body sent a byte per TCP segment costs its size,
/// not a read buffer per byte.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = body;
    let read = async {
        // The usual body comes in one chunk and is kept as it is; from a
        // second chunk on, chunks are copied into one buffer and dropped.
        let mut first: Option<Bytes> = None;
        let mut rest = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("could not read request body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let have = first.as_ref().map_or(0, Bytes::len) + rest.len();
            if have + data.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            match first.take() {
                None if rest.is_empty() => first = Some(data),
                None => rest.extend_from_slice(&data),
                Some(one) => {
                    rest.reserve(declared.map_or(0, |n| n as usize).min(limit));
                    rest.extend_from_slice(&one);
                    rest.extend_from_slice(&data);
                }
            }
        }
        Ok(first.unwrap_or_else(|| rest.freeze()))
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::body_timeout(deadline.as_secs())),
    }
}

/// How a body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Json,
    Form,
    Multipart,
}

/// The kind of a body by its `Content-Type`. With no content type, a body
/// that starts with `{` or `[`, or is a JSON value (`"text"`, `null`, `7`),
/// is JSON (so a list is refused as one, not read as a form of odd keys);
/// anything else a url-encoded form.
pub fn kind(headers: &HeaderMap, body: &[u8]) -> Result<Kind, ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        let start = body.trim_ascii_start();
        let json = start.starts_with(b"{")
            || start.starts_with(b"[")
            || (!start.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok());
        return Ok(if json { Kind::Json } else { Kind::Form });
    };
    let content_type = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Content-Type header is not valid text"))?;
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(Kind::Form),
        "application/json" => Ok(Kind::Json),
        e if e.starts_with("application/") && e.ends_with("+json") => Ok(Kind::Json),
        "multipart/form-data" => Ok(Kind::Multipart),
        _ => Err(ApiError::unsupported_media_type()),
    }
}

/// Parses a body by its kind (see [`kind`]) into flat fields.
pub async fn parse_fields(headers: &HeaderMap, body: Bytes) -> Result<Fields, ApiError> {
    match kind(headers, &body)? {
        Kind::Json => parse_json(&body),
        Kind::Form => parse_form(&body),
        Kind::Multipart => {
            let content_type = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            parse_multipart(content_type, body).await
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Fields, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(Fields::Json(map)),
        Ok(_) => Err(ApiError::bad_request("invalid JSON: expected an object")),
        Err(e) => Err(ApiError::bad_request(format!("invalid JSON: {e}"))),
    }
}

fn parse_form(body: &[u8]) -> Result<Fields, ApiError> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map(Fields::Text)
        .map_err(|e| ApiError::bad_request(format!("invalid form body: {e}")))
}

async fn parse_multipart(content_type: &str, body: Bytes) -> Result<Fields, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
    let stream = futures_util::stream::iter([Ok::<Bytes, Infallible>(body)]);
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut pairs = Vec::new();
    let invalid = |e: multer::Error| ApiError::bad_request(format!("invalid multipart body: {e}"));
    while let Some(field) = multipart.next_field().await.map_err(invalid)? {
        let name = field.name().unwrap_or_default().to_string();
        let value = field.text().await.map_err(invalid)?;
        pairs.push((name, value));
    }
    Ok(Fields::Text(pairs))
}

/// Refuses (400) a JSON body that is not an object: serde reads a struct
/// from a list too (`[true, "reject"]` as `{"process": true, "strategy":
/// "reject"}`), which no client means.
pub fn expect_object(body: &[u8]) -> Result<(), ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        None => Err(ApiError::bad_request("invalid JSON: the body is empty")),
        Some(_) => Err(ApiError::bad_request(
            "invalid JSON: expected an object, not a list or a single value",
        )),
    }
}

/// A field of a body that must be a JSON object, read into `T`: 400 for a
/// list or a value (serde would read a struct from a list), 422 naming the
/// field for an object of the wrong shape.
pub fn object_field<T: DeserializeOwned>(field: &str, value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "invalid JSON: {field} must be an object"
        )));
    }
    serde_json::from_value(value).map_err(|e| ApiError::unprocessable(format!("{field}: {e}")))
}

/// Parses a JSON object body into `T`: 415 for another content type, 400
/// for bytes that are not JSON or JSON that is not an object, 422 for an
/// object of the wrong shape (missing or mistyped fields), each naming what
/// is wrong. Fields `T` does not know are ignored, as the seeds' FastAPI
/// (pydantic) services did, so their clients may send them.
pub fn json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json"
            && !(essence.starts_with("application/") && essence.ends_with("+json"))
        {
            return Err(ApiError::new(
                hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content type {ct:?}; send application/json"),
            ));
        }
    }
    expect_object(body)?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Data if path == "." => ApiError::unprocessable(inner.to_string()),
            Category::Data => ApiError::unprocessable(format!("{path}: {inner}")),
            _ => ApiError::bad_request(format!("invalid JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    // serde reads a struct from an array too (`["Confirmed"]` as
    // `{"status": "Confirmed"}`, `[]` as all defaults): every body is an object.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::unprocessable("expected a JSON object"));
    }
    Ok(value)
}
