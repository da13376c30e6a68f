//! HTTP: one router built from the config at start, one `match` that sends
//! each (route, method) to its handler, and the response helpers. Handlers
//! live in one module per API group; errors become responses in `error`.

pub mod body;
pub mod error;
mod ops;
mod order_store;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use error::ApiError;

/// Every response body: a buffer for most routes, a stream for live ones.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What a path leads to; the methods each takes are in [`Route::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Update,
    GetAll,
    GetCurrentOrder,
    GetCompletedOrders,
    GetNewOrders,
    GetStatus,
    Healthz,
}

impl Route {
    /// The `Allow` header for the route.
    fn allow(self) -> &'static str {
        match self {
            Route::Update => "PUT, POST, OPTIONS",
            _ => "GET, HEAD, OPTIONS",
        }
    }
}

/// Everything a request handler needs; built once, shared by all connections.
pub struct App {
    broker: Broker,
    router: matchit::Router<Route>,
    max_body_bytes: usize,
    cors_origin: Option<HeaderValue>,
    views: order_store::ViewCache,
}

impl App {
    /// Builds the route table from the config's URLs; two URLs that clash are
    /// a config error.
    pub fn new(broker: Broker, config: &Config) -> Result<App, ConfigError> {
        let urls = &config.order_store;
        let mut routes: Vec<(&str, Route)> = vec![
            (&urls.url_update, Route::Update),
            (&urls.url_get_all, Route::GetAll),
            (&urls.url_get_current_order, Route::GetCurrentOrder),
            (&urls.url_get_completed_orders, Route::GetCompletedOrders),
            (&urls.url_get_new_orders, Route::GetNewOrders),
            (&urls.url_get_status, Route::GetStatus),
            ("/healthz", Route::Healthz),
        ];
        routes.extend(
            urls.url_update_aliases
                .iter()
                .map(|u| (u.as_str(), Route::Update)),
        );
        let mut router = matchit::Router::new();
        for (path, route) in routes {
            router
                .insert(path, route)
                .map_err(|e| ConfigError::new(format!("route {path:?} cannot be served: {e}")))?;
        }
        let cors_origin = match config.http.cors_allow_origin.as_str() {
            "" => None,
            origin => Some(HeaderValue::from_str(origin).map_err(|_| {
                ConfigError::new("http.cors_allow_origin is not a valid header value")
            })?),
        };
        Ok(App {
            broker,
            router,
            max_body_bytes: config.limits.max_body_bytes,
            cors_origin,
            views: order_store::ViewCache::default(),
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Answers one request. Never fails: every error is a response.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let mut response = match self.route(req).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        if let Some(origin) = &self.cors_origin {
            response
                .headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let matched = self
            .router
            .at(req.uri().path())
            .map_err(|_| ApiError::not_found("Not found"))?;
        let route = *matched.value;
        // Only get_status has a parameter; copy it out so `req` can move on.
        let id_param = matched.params.get("id").map(str::to_owned);
        let method = req.method().clone();
        if method == Method::OPTIONS {
            return Ok(preflight(route, &req));
        }
        let read = method == Method::GET || method == Method::HEAD;
        let write = method == Method::PUT || method == Method::POST;
        match route {
            Route::Update if write => order_store::update(self, req).await,
            Route::GetAll if read => Ok(order_store::get_all(self)),
            Route::GetCurrentOrder if read => Ok(order_store::get_current_order(self)),
            Route::GetCompletedOrders if read => Ok(order_store::get_completed_orders(self)),
            Route::GetNewOrders if read => Ok(order_store::get_new_orders(self)),
            Route::GetStatus if read => order_store::get_status(self, id_param.as_deref()),
            Route::Healthz if read => Ok(ops::healthz(self)),
            _ => Err(ApiError::method_not_allowed(route.allow())),
        }
    }
}

/// `OPTIONS`: the methods the route takes, and CORS preflight answers.
fn preflight(route: Route, req: &Request<Incoming>) -> Response<Body> {
    let allow = HeaderValue::from_static(route.allow());
    let requested = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("content-type"));
    let mut response = empty(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    headers.insert(header::ALLOW, allow.clone());
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, allow);
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A JSON response from bytes that are already JSON.
pub fn json_bytes(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    // Serializing our own types to a Vec cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    json_bytes(status, bytes)
}
