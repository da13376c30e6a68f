//! `GET /docs`: the API reference, readable: Swagger UI over
//! `/openapi.json`. Its files ship inside the `utoipa-swagger-ui` crate
//! (vendored, built into the binary), so the page loads nothing from
//! elsewhere: no CDN, no validator badge.

use std::sync::{Arc, LazyLock};

use hyper::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use utoipa_swagger_ui::Config;

use super::error::ApiError;
use super::{Body, Req, full};

/// The page's settings: our document, and no call to the public validator
/// Swagger UI uses by default.
static CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        Config::from("/openapi.json")
            .validator_url("none")
            .try_it_out_enabled(true)
            .display_operation_id(true),
    )
});

/// `GET /docs` (the page) and `GET /docs/{file}` (its scripts and styles).
pub fn docs(req: &Req) -> Result<Response<Body>, ApiError> {
    let file = req.param.as_deref().unwrap_or("");
    let not_found = || ApiError::not_found("No such file");
    let served = utoipa_swagger_ui::serve(file, CONFIG.clone())
        .map_err(|_| not_found())?
        .ok_or_else(not_found)?;
    let mut bytes = served.bytes.into_owned();
    if file.is_empty() || file == "index.html" {
        // Served at /docs as well as /docs/index.html: the page's relative
        // URLs name files under /docs/ either way.
        let page = String::from_utf8_lossy(&bytes).replacen(
            "<head>",
            "<head>\n    <base href=\"/docs/\">",
            1,
        );
        bytes = page.into_bytes();
    }
    let mut response = Response::new(full(bytes));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    if let Ok(media) = HeaderValue::from_str(&served.content_type) {
        headers.insert(CONTENT_TYPE, media);
    }
    if served.gzpipped {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
