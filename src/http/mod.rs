//! HTTP: one router built from the config at start, one `match` that sends
//! each (route, method) to its handler, and the response helpers. Handlers
//! live in one module per API group; errors become responses in `error`.

pub(crate) mod access;
mod analytics;
pub mod body;
mod catalog;
mod cpee;
mod docs;
pub mod error;
mod export;
mod fulfilment;
mod idempotency;
mod lifecycle;
pub mod live;
mod metrics;
mod openapi;
mod ops;
mod order_store;
mod orders;
mod store;
mod templates;

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
use crate::cpee::Audience;
use error::ApiError;

/// Every response body: a buffer for most routes, a stream for live ones.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What a path leads to; the methods each takes are in [`Route::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    // The seed order_store API (paths from the config).
    Update,
    GetAll,
    GetCurrentOrder,
    GetCompletedOrders,
    GetNewOrders,
    GetStatus,
    // Catalog and customers.
    Products,
    Product,
    Customers,
    Customer,
    CustomerOrders,
    // Orders with items.
    Orders,
    MyOrders,
    Order,
    OrderItems,
    ProcessOrder,
    Lifecycle,
    // The Flask store tutorial's blueprints (`/api/...`) and its page.
    ApiProducts,
    ApiProduct,
    ApiCustomers,
    ApiCustomer,
    ApiOrders,
    StorePage,
    // Fulfilment.
    AssignDelivery,
    OrderStatus,
    DeliveryLocation,
    CancelOrder,
    Export,
    BulkStatus,
    BulkAssign,
    ScheduledOrders,
    Feedback,
    Templates,
    Template,
    TemplateOrder,
    RequestReturn,
    OrderReturn,
    Analytics,
    Events,
    Views,
    TrackingStream,
    Board,
    Metrics,
    Readyz,
    Cluster,
    OpenApi,
    Docs,
    // Process engines.
    Intake,
    NextOrder,
    CpeeWait,
    CpeeCallbacks,
    CpeeCallback,
    /// Keep last (see the assertion below the enum).
    Healthz,
}

// `Healthz` stays the last variant: this fails to compile if a route is
// missing from `Route::ALL`, which the metrics index by `route as usize`.
const _: () = assert!(Route::Healthz as usize + 1 == Route::ALL.len());

impl Route {
    /// Every route, in declaration order (`route as usize` indexes it).
    pub(crate) const ALL: [Route; 53] = [
        Route::Update,
        Route::GetAll,
        Route::GetCurrentOrder,
        Route::GetCompletedOrders,
        Route::GetNewOrders,
        Route::GetStatus,
        Route::Products,
        Route::Product,
        Route::Customers,
        Route::Customer,
        Route::CustomerOrders,
        Route::Orders,
        Route::MyOrders,
        Route::Order,
        Route::OrderItems,
        Route::ProcessOrder,
        Route::Lifecycle,
        Route::ApiProducts,
        Route::ApiProduct,
        Route::ApiCustomers,
        Route::ApiCustomer,
        Route::ApiOrders,
        Route::StorePage,
        Route::AssignDelivery,
        Route::OrderStatus,
        Route::DeliveryLocation,
        Route::CancelOrder,
        Route::Export,
        Route::BulkStatus,
        Route::BulkAssign,
        Route::ScheduledOrders,
        Route::Feedback,
        Route::Templates,
        Route::Template,
        Route::TemplateOrder,
        Route::RequestReturn,
        Route::OrderReturn,
        Route::Analytics,
        Route::Events,
        Route::Views,
        Route::TrackingStream,
        Route::Board,
        Route::Metrics,
        Route::Readyz,
        Route::Cluster,
        Route::OpenApi,
        Route::Docs,
        Route::Intake,
        Route::NextOrder,
        Route::CpeeWait,
        Route::CpeeCallbacks,
        Route::CpeeCallback,
        Route::Healthz,
    ];

    /// The route's name in metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::Update => "update",
            Route::GetAll => "get_all",
            Route::GetCurrentOrder => "get_current_order",
            Route::GetCompletedOrders => "get_completed_orders",
            Route::GetNewOrders => "get_new_orders",
            Route::GetStatus => "get_status",
            Route::Products => "products",
            Route::Product => "product",
            Route::Customers => "customers",
            Route::Customer => "customer",
            Route::CustomerOrders => "customer_orders",
            Route::Orders => "orders",
            Route::MyOrders => "my_orders",
            Route::Order => "order",
            Route::OrderItems => "order_items",
            Route::ProcessOrder => "process_order",
            Route::Lifecycle => "lifecycle",
            Route::ApiProducts => "api_products",
            Route::ApiProduct => "api_product",
            Route::ApiCustomers => "api_customers",
            Route::ApiCustomer => "api_customer",
            Route::ApiOrders => "api_orders",
            Route::StorePage => "store_page",
            Route::AssignDelivery => "assign_delivery",
            Route::OrderStatus => "order_status",
            Route::DeliveryLocation => "delivery_location",
            Route::CancelOrder => "cancel_order",
            Route::Export => "export",
            Route::BulkStatus => "bulk_status_update",
            Route::BulkAssign => "bulk_assign_delivery",
            Route::ScheduledOrders => "scheduled_orders",
            Route::Feedback => "feedback",
            Route::Templates => "templates",
            Route::Template => "template",
            Route::TemplateOrder => "template_order",
            Route::RequestReturn => "request_return",
            Route::OrderReturn => "order_return",
            Route::Analytics => "analytics",
            Route::Events => "events",
            Route::Views => "views",
            Route::TrackingStream => "tracking_stream",
            Route::Board => "board",
            Route::Metrics => "metrics",
            Route::Readyz => "readyz",
            Route::Cluster => "cluster",
            Route::OpenApi => "openapi",
            Route::Docs => "docs",
            Route::Intake => "intake",
            Route::NextOrder => "next_order",
            Route::CpeeWait => "cpee_wait",
            Route::CpeeCallbacks => "cpee_callbacks",
            Route::CpeeCallback => "cpee_callback",
            Route::Healthz => "healthz",
        }
    }

    /// The `Allow` header for the route.
    pub(crate) fn allow(self) -> &'static str {
        if let Some(same) = self.blueprint_of() {
            return same.allow();
        }
        match self {
            Route::Update => "PUT, POST, OPTIONS",
            Route::Products
            | Route::Customers
            | Route::CustomerOrders
            | Route::Orders
            | Route::Templates => "GET, HEAD, POST, OPTIONS",
            Route::Product | Route::Customer => "GET, HEAD, PUT, DELETE, OPTIONS",
            Route::Order => "GET, HEAD, POST, PUT, DELETE, OPTIONS",
            Route::OrderItems | Route::AssignDelivery | Route::OrderStatus | Route::OrderReturn => {
                "PUT, OPTIONS"
            }
            Route::DeliveryLocation => "GET, HEAD, PUT, OPTIONS",
            Route::CancelOrder
            | Route::BulkAssign
            | Route::ScheduledOrders
            | Route::Feedback
            | Route::TemplateOrder
            | Route::RequestReturn => "POST, OPTIONS",
            Route::BulkStatus => "PUT, OPTIONS",
            Route::ProcessOrder => "GET, HEAD, PUT, DELETE, OPTIONS",
            Route::Lifecycle | Route::Intake | Route::CpeeWait => "POST, OPTIONS",
            // Not HEAD: it would take an order and throw its answer away.
            Route::NextOrder => "GET, POST, OPTIONS",
            Route::CpeeCallback => "DELETE, OPTIONS",
            Route::Template => "GET, HEAD, DELETE, OPTIONS",
            _ => "GET, HEAD, OPTIONS",
        }
    }

    /// For a Flask store blueprint route, the broker route it serves the
    /// same way (handlers, methods, who may call); see `store`.
    pub(crate) fn blueprint_of(self) -> Option<Route> {
        match self {
            Route::ApiProducts => Some(Route::Products),
            Route::ApiProduct => Some(Route::Product),
            Route::ApiCustomers => Some(Route::Customers),
            Route::ApiCustomer => Some(Route::Customer),
            Route::ApiOrders => Some(Route::Orders),
            _ => None,
        }
    }

    /// The fixed paths; the seed's come from the config.
    const FIXED: [(&'static str, Route); 51] = [
        ("/orders/intake", Route::Intake),
        ("/cpee/next-order", Route::NextOrder),
        ("/cpee/wait", Route::CpeeWait),
        ("/cpee/callbacks", Route::CpeeCallbacks),
        ("/cpee/callbacks/{id}", Route::CpeeCallback),
        ("/", Route::Board),
        ("/events", Route::Events),
        ("/views", Route::Views),
        ("/orders/{id}/tracking-stream", Route::TrackingStream),
        ("/healthz", Route::Healthz),
        ("/readyz", Route::Readyz),
        ("/cluster", Route::Cluster),
        ("/metrics", Route::Metrics),
        ("/openapi.json", Route::OpenApi),
        ("/docs", Route::Docs),
        ("/docs/{*file}", Route::Docs),
        ("/products", Route::Products),
        ("/products/{id}", Route::Product),
        ("/customers", Route::Customers),
        ("/customers/{id}", Route::Customer),
        ("/customers/{id}/orders", Route::CustomerOrders),
        ("/orders", Route::Orders),
        ("/orders/my-orders", Route::MyOrders),
        ("/orders/{id}", Route::Order),
        ("/orders/{id}/items", Route::OrderItems),
        ("/orders/{id}/assign-delivery", Route::AssignDelivery),
        ("/orders/{id}/status", Route::OrderStatus),
        ("/orders/{id}/delivery-location", Route::DeliveryLocation),
        ("/orders/{id}/cancel", Route::CancelOrder),
        ("/orders/export", Route::Export),
        ("/orders/bulk-status-update", Route::BulkStatus),
        ("/orders/bulk-assign-delivery", Route::BulkAssign),
        ("/orders/scheduled", Route::ScheduledOrders),
        ("/orders/{id}/feedback", Route::Feedback),
        ("/templates", Route::Templates),
        ("/templates/{id}", Route::Template),
        ("/templates/{id}/order", Route::TemplateOrder),
        ("/orders/{id}/request-return", Route::RequestReturn),
        ("/orders/{id}/return", Route::OrderReturn),
        ("/analytics/{report}", Route::Analytics),
        ("/api/orders/{id}", Route::ProcessOrder),
        // Flask registers blueprint roots with a trailing slash and
        // redirects the bare path; matchit tells them apart, so both.
        ("/api/products", Route::ApiProducts),
        ("/api/products/", Route::ApiProducts),
        ("/api/products/{id}", Route::ApiProduct),
        ("/api/customers", Route::ApiCustomers),
        ("/api/customers/", Route::ApiCustomers),
        ("/api/customers/{id}", Route::ApiCustomer),
        ("/api/orders", Route::ApiOrders),
        ("/api/orders/", Route::ApiOrders),
        ("/store", Route::StorePage),
        ("/api/store/orders/{action}", Route::Lifecycle),
    ];
}

/// Every (path, route) the router serves: the seed's paths from the config,
/// then the fixed ones.
fn routes(config: &Config) -> Vec<(&str, Route)> {
    let urls = &config.order_store;
    let mut routes: Vec<(&str, Route)> = vec![
        (&urls.url_update, Route::Update),
        (&urls.url_get_all, Route::GetAll),
        (&urls.url_get_current_order, Route::GetCurrentOrder),
        (&urls.url_get_completed_orders, Route::GetCompletedOrders),
        (&urls.url_get_new_orders, Route::GetNewOrders),
        (&urls.url_get_status, Route::GetStatus),
    ];
    routes.extend(
        urls.url_update_aliases
            .iter()
            .map(|u| (u.as_str(), Route::Update)),
    );
    routes.extend(Route::FIXED);
    routes
}

/// A request whose body has been read (within the size limit).
pub struct Req {
    pub method: Method,
    pub uri: hyper::Uri,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    /// The path parameter (`{id}` or `{action}`), if the route has one.
    pub param: Option<String>,
    /// The address the request came from (`auth.cpee_networks`).
    pub peer: Option<std::net::IpAddr>,
    /// It came over https (directly, through a trusted proxy, or to the
    /// cluster node that forwarded it).
    pub https: bool,
}

impl Req {
    /// The query string's pairs, decoded.
    pub fn query(&self) -> Result<Vec<(String, String)>, ApiError> {
        serde_urlencoded::from_str(self.uri.query().unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }

    /// The path parameter as a numeric id; 404 with `what` if it is not one.
    pub fn id(&self, what: &'static str) -> Result<u64, ApiError> {
        self.param
            .as_deref()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| ApiError::not_found(what))
    }
}

/// Everything a request handler needs; built once, shared by all connections.
pub struct App {
    broker: Broker,
    router: matchit::Router<Route>,
    max_body_bytes: usize,
    /// How long a request's body may take (`limits.body_read_timeout_secs`).
    body_deadline: std::time::Duration,
    /// `http.cors_allow_origin`: `["*"]`, the allowed origins, or none.
    cors_origin: Vec<HeaderValue>,
    views: order_store::ViewCache,
    store_name: String,
    idempotency: idempotency::Idempotency,
    auth: crate::auth::Auth,
    /// API groups that need no token (`auth.open`, less `views` with
    /// `auth.protect_views`).
    open_groups: Vec<crate::auth::ApiGroup>,
    /// Where anonymous engine writes may come from (`auth.cpee_networks`).
    cpee_networks: Vec<ipnet::IpNet>,
    /// `http.require_https`: only requests that came over TLS are answered.
    require_https: bool,
    /// Whose `X-Forwarded-Proto` is believed (`http.trusted_proxies`).
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Event streams: the shared renderer, limits, and the shutdown switch.
    pub live: std::sync::Arc<live::Live>,
    /// The board page, rendered once from its template.
    board: Bytes,
    /// `/openapi.json`, built once from the routes.
    openapi: Bytes,
    /// CPEE dispatch, waits and callbacks.
    pub cpee: std::sync::Arc<crate::cpee::Cpee>,
    cpee_intake_status: String,
    cpee_max_wait_secs: u64,
    /// `limits.max_bulk_orders`.
    max_bulk_orders: usize,
    /// Aggregates for `/analytics`, kept from the change feed.
    pub analytics: std::sync::Arc<crate::analytics::Analytics>,
    /// Request counters and latency histograms for `/metrics`.
    pub metrics: metrics::Metrics,
    /// False until the broker has recovered its state and may serve.
    pub ready: std::sync::atomic::AtomicBool,
}

impl App {
    /// Builds the route table from the config's URLs; two URLs that clash are
    /// a config error.
    pub fn new(broker: Broker, config: &Config) -> Result<App, ConfigError> {
        let routes = routes(config);
        let open_groups = access::open_groups(&config.auth);
        let auth = crate::auth::Auth::new(&config.auth.tokens, &config.auth.jwt_secret)
            .with_roles(&config.auth.jwt_roles);
        let openapi = openapi::document(
            &routes,
            &openapi::Policy {
                auth: auth.enabled(),
                open: &open_groups,
            },
        );
        let mut router = matchit::Router::new();
        for (path, route) in routes {
            router
                .insert(path, route)
                .map_err(|e| ConfigError::new(format!("route {path:?} cannot be served: {e}")))?;
        }
        let cors_origin = config
            .http
            .cors_allow_origin
            .list()
            .into_iter()
            .map(|o| {
                HeaderValue::from_str(o).map_err(|_| {
                    ConfigError::new(format!(
                        "http.cors_allow_origin: {o:?} is not a valid origin"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let callbacks_tls = crate::tls::callback_connector(&config.cpee)?;
        Ok(App {
            cpee: crate::cpee::Cpee::new(broker.clone(), config.cpee.clone(), callbacks_tls),
            broker,
            router,
            max_body_bytes: config.limits.max_body_bytes,
            body_deadline: std::time::Duration::from_secs(config.limits.body_read_timeout_secs),
            cors_origin,
            views: order_store::ViewCache::default(),
            store_name: config.shop.store_name.clone(),
            idempotency: idempotency::Idempotency::new(
                std::time::Duration::from_secs(config.http.idempotency_ttl_secs),
                config.limits.max_idempotency_keys,
                config.limits.max_idempotency_keys_per_caller,
            ),
            auth,
            open_groups,
            // Validated with the config.
            cpee_networks: config
                .auth
                .cpee_networks
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            require_https: config.http.require_https,
            // Validated with the config.
            trusted_proxies: config
                .http
                .trusted_proxies
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            live: std::sync::Arc::new(live::Live::new(&config.events)),
            board: live::board_page(&config.board),
            openapi,
            cpee_intake_status: config.cpee.intake_status.clone(),
            cpee_max_wait_secs: config.cpee.max_wait_secs,
            max_bulk_orders: config.limits.max_bulk_orders,
            metrics: metrics::Metrics::default(),
            analytics: Default::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Event streams open now.
    pub fn open_streams(&self) -> usize {
        self.live.open_streams()
    }

    /// Answers one request from `peer` (the connection's address), which
    /// came over TLS if `tls`. Never fails: every error is a response.
    pub async fn handle(
        self: &std::sync::Arc<Self>,
        req: Request<Incoming>,
        peer: Option<std::net::IpAddr>,
        tls: bool,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let origin = self.cors_for(req.headers().get(header::ORIGIN));
        // Route once: the metrics need the route, the handler its parameter.
        let found = self
            .router
            .at(req.uri().path())
            .ok()
            .map(|m| (*m.value, m.params.iter().next().map(|(_, v)| v.to_owned())));
        let route = found.as_ref().map(|(r, _)| *r);
        let path = if tracing::enabled!(tracing::Level::DEBUG) {
            Some(req.uri().path().to_string())
        } else {
            None
        };
        let mut response = match self.route(req, found, peer, tls).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        let took = started.elapsed();
        self.metrics.record(route, response.status(), took);
        if let Some(path) = path {
            // Never the query string or headers: they may carry tokens.
            tracing::debug!(%method, path, status = response.status().as_u16(), micros = took.as_micros() as u64, "request");
        }
        if let Some(origin) = origin {
            let headers = response.headers_mut();
            if origin != "*" {
                headers.append(header::VARY, HeaderValue::from_static("origin"));
            }
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            // Without this a page on another origin cannot read an order's
            // version, where a new record lives, or the next page's cursor.
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSED),
            );
        }
        response
    }

    /// Whether the client's request came over TLS: to the broker itself,
    /// or, from a trusted proxy that says so, to that proxy. Of several
    /// `X-Forwarded-Proto` values the last counts: the one the proxy that
    /// connects to the broker set (a client may send its own before it).
    /// Whether the peer is one of `http.trusted_proxies`.
    pub(crate) fn is_trusted_proxy(&self, peer: Option<std::net::IpAddr>) -> bool {
        peer.map(|ip| ip.to_canonical())
            .is_some_and(|ip| self.trusted_proxies.iter().any(|n| n.contains(&ip)))
    }

    fn came_over_https(
        &self,
        req: &Request<Incoming>,
        peer: Option<std::net::IpAddr>,
        tls: bool,
    ) -> bool {
        if !self.is_trusted_proxy(peer) {
            return tls;
        }
        let forwarded = req
            .headers()
            .get_all("x-forwarded-proto")
            .iter()
            .next_back()
            .map(|v| {
                v.to_str()
                    .unwrap_or_default()
                    .rsplit(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
            });
        match forwarded {
            Some(proto) => proto.eq_ignore_ascii_case("https"),
            // A proxy that passes TLS through says nothing: the connection does.
            None => tls,
        }
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`: `*`
    /// when any origin is allowed, the origin itself when it is listed.
    fn cors_for(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self.cors_origin.as_slice() {
            [] => None,
            [one] if one == "*" => Some(one.clone()),
            listed => origin.filter(|o| listed.contains(o)).cloned(),
        }
    }

    async fn route(
        self: &std::sync::Arc<Self>,
        req: Request<Incoming>,
        found: Option<(Route, Option<String>)>,
        peer: Option<std::net::IpAddr>,
        tls: bool,
    ) -> Result<Response<Body>, ApiError> {
        // A request another node of the cluster forwarded, vouched for by
        // this leader's token: its client's address and whether it came
        // over https are what that node says. One that names no current
        // token (this node stopped leading, or led again since the other
        // read the lease) is not judged as the follower's own: retry.
        let forwarded = match self.broker.cluster() {
            Some(cluster) if req.headers().contains_key(crate::cluster::FORWARDED_HEADER) => {
                Some(cluster.forwarded_peer(req.headers()).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this node does not lead the cluster (any more); retry",
                    )
                })?)
            }
            _ => None,
        };
        let (peer, https) = match forwarded {
            Some(vouched) => (vouched.client, vouched.https),
            None => (peer, self.came_over_https(&req, peer, tls)),
        };
        // Load balancers probe over plain http; nothing else is answered
        // over it with `http.require_https`, not even a 404.
        let probe = matches!(found, Some((Route::Healthz | Route::Readyz, _)));
        if self.require_https && !probe && !https {
            return Ok(https_required(req.uri().path()));
        }
        let (route, param) = found.ok_or_else(|| ApiError::not_found("Not found"))?;
        let ops = matches!(
            route,
            Route::Healthz | Route::Readyz | Route::Cluster | Route::Metrics | Route::OpenApi
        );
        if !ops && !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            // EventSource gives up for good on any answer but 200: tell it
            // to come back instead.
            if matches!(route, Route::Events | Route::TrackingStream) {
                return Ok(self
                    .live
                    .come_back("starting: the state is being recovered"));
            }
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: the state is being recovered from the journal; retry shortly",
            ));
        }
        if req.method() == Method::OPTIONS {
            return Ok(preflight(route, req.headers()));
        }
        // A callback this (or another) broker sent, pointed back at a
        // broker: answering it would feed a loop of changes and callbacks.
        if req.headers().contains_key(crate::cpee::LOOP_HEADER) {
            return Err(ApiError::new(
                StatusCode::LOOP_DETECTED,
                "this is a callback sent by an order broker; a callback URL must point at \
                 the process engine, not at a broker",
            ));
        }
        let (parts, incoming) = req.into_parts();
        let mut req = Req {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body: Bytes::new(),
            param,
            peer,
            https,
        };
        // Who calls, and whether they may, is settled from the head alone:
        // a caller without the right costs no body read.
        let caller = access::authorize(self, route, &req)?;
        let caller = caller.as_ref();
        req.body = body::read_limited(
            &req.headers,
            incoming,
            self.max_body_bytes,
            self.body_deadline,
        )
        .await?;
        if req.method == Method::GET || req.method == Method::HEAD {
            return self.dispatch(route, &req, caller).await;
        }
        match self.idempotency.claim(&req)? {
            None => self.dispatch(route, &req, caller).await,
            Some(idempotency::Claim::Answer(response)) => Ok(response),
            Some(idempotency::Claim::Run { scope, fingerprint }) => {
                // Runs to the end on a task of its own, so a client that goes
                // away (which drops this future) cancels nothing: once the
                // change is applied, its key is bound to its answer, and a
                // retry gets that answer instead of a second change.
                let app = self.clone();
                let caller = caller.cloned();
                let task = tokio::spawn(async move {
                    // Frees the key only if the task itself dies (a panic).
                    let mut guard = idempotency::ClaimGuard {
                        idempotency: &app.idempotency,
                        scope: Some(scope),
                    };
                    let response = match app.dispatch(route, &req, caller.as_ref()).await {
                        Ok(response) => response,
                        Err(e) => e.into_response(),
                    };
                    let scope = guard.scope.take().expect("set above");
                    app.idempotency.finish(scope, fingerprint, response).await
                });
                task.await.map_err(|e| {
                    tracing::error!(error = %e, "a keyed request's task failed");
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                })
            }
        }
    }

    /// Runs a request's handler; with the journal, answers only once every
    /// change it made may be acknowledged: fsynced with `fsync = "always"`,
    /// written to the file with `everysec` and `no` (DESIGN invariant 5).
    /// Once the journal cannot be written, a change is answered with 503.
    async fn dispatch(
        &self,
        route: Route,
        req: &Req,
        caller: Option<&crate::auth::Caller>,
    ) -> Result<Response<Body>, ApiError> {
        if let Some(cluster) = self.broker.cluster() {
            return self.dispatch_clustered(cluster, route, req, caller).await;
        }
        let journal = self.broker.journal();
        // Reads do not wait, except for the one that hands out work.
        let Some(journal) = journal.filter(|_| {
            !(req.method == Method::GET || req.method == Method::HEAD) || route == Route::NextOrder
        }) else {
            return self.handler(route, req, caller).await;
        };
        let before = self.broker.published_seq();
        let response = self.handler(route, req, caller).await;
        // Any change this request made has a seq in (before, after].
        let after = self.broker.published_seq();
        if after > before && journal.durable(after).await.is_err() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the change was applied in memory but the journal cannot be written, \
                 so it is not durable; see the broker's log",
            ));
        }
        response
    }

    /// [`App::dispatch`] in a cluster: reads are answered here; a change
    /// is made by the leader (forwarded there from a follower) and answered
    /// once JetStream acknowledged it, with its seq in
    /// [`crate::cluster::SEQ_HEADER`] so the follower that forwarded it
    /// answers once it applied it.
    async fn dispatch_clustered(
        &self,
        cluster: &crate::cluster::Cluster,
        route: Route,
        req: &Req,
        caller: Option<&crate::auth::Caller>,
    ) -> Result<Response<Body>, ApiError> {
        let read = req.method == Method::GET || req.method == Method::HEAD;
        // Handing out work and waiting for a state register on the leader,
        // which delivers; it alone knows how their deliveries stand.
        let leader_only = matches!(
            route,
            Route::NextOrder | Route::CpeeWait | Route::CpeeCallbacks
        );
        if read && !leader_only {
            return self.handler(route, req, caller).await;
        }
        let unavailable = |why: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why);
        if !cluster.may_commit() {
            if req.headers.contains_key(crate::cluster::FORWARDED_HEADER) {
                return Err(unavailable(
                    "this node does not lead the cluster (any more); retry".into(),
                ));
            }
            let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
            // A long poll waits on the leader up to `cpee.max_wait_secs`.
            let deadline = if leader_only {
                std::time::Duration::from_secs(self.cpee_max_wait_secs + 30)
            } else {
                std::time::Duration::from_secs(30)
            };
            let forwarded = cluster
                .forward(
                    &req.method,
                    path,
                    &req.headers,
                    req.body.clone(),
                    deadline,
                    crate::cluster::Vouched {
                        client: req.peer,
                        https: req.https,
                    },
                )
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let mut response = Response::new(full(forwarded.body));
            *response.status_mut() = forwarded.status;
            *response.headers_mut() = forwarded.headers;
            return Ok(response);
        }
        let before = self.broker.published_seq();
        let response = self.handler(route, req, caller).await;
        let after = self.broker.published_seq();
        if after > before && cluster.durable(after).await.is_err() {
            return Err(unavailable(
                "the change was not acknowledged by the cluster's stream (the leader \
                 stepped down or lost its quorum): its outcome is unknown; read before \
                 writing again, or write with If-Match"
                    .into(),
            ));
        }
        let mut response = response?;
        if let Ok(value) = HeaderValue::from_str(&after.0.to_string()) {
            response
                .headers_mut()
                .insert(crate::cluster::SEQ_HEADER, value);
        }
        Ok(response)
    }

    /// Sends a request to its handler by route and method.
    async fn handler(
        &self,
        route: Route,
        req: &Req,
        caller: Option<&crate::auth::Caller>,
    ) -> Result<Response<Body>, ApiError> {
        let m = &req.method;
        match route {
            Route::Update if m == Method::PUT || m == Method::POST => {
                return order_store::update(self, req).await;
            }
            Route::Intake if m == Method::POST => return cpee::intake(self, req).await,
            // Not HEAD: it would take an order and throw its answer away.
            Route::NextOrder if m == Method::GET || m == Method::POST => {
                let viewer = access::viewer(self, route, caller);
                let audience = Audience::of(viewer, caller.and_then(|c| c.partner_id()));
                return cpee::next_order(self, req, audience).await;
            }
            Route::CpeeWait if m == Method::POST => {
                let viewer = access::viewer(self, route, caller);
                let audience = Audience::of(viewer, caller.and_then(|c| c.partner_id()));
                return cpee::wait(self, req, audience).await;
            }
            _ => {}
        }
        // Every other handler runs to its answer without waiting, under one
        // pin: no word an order it reads uses is reclaimed meanwhile (see
        // `crate::symbols`). Those above take their own pins.
        let _pin = self.broker.pin();
        self.answer_now(route, req, caller)
    }

    /// The handlers that answer at once (see [`App::handler`]).
    fn answer_now(
        &self,
        route: Route,
        req: &Req,
        caller: Option<&crate::auth::Caller>,
    ) -> Result<Response<Body>, ApiError> {
        let read = req.method == Method::GET || req.method == Method::HEAD;
        let m = &req.method;
        match route {
            Route::GetAll if read => Ok(order_store::get_all(self)),
            Route::GetCurrentOrder if read => Ok(order_store::get_current_order(self)),
            Route::GetCompletedOrders if read => Ok(order_store::get_completed_orders(self)),
            Route::GetNewOrders if read => Ok(order_store::get_new_orders(self)),
            Route::GetStatus if read => order_store::get_status(self, req.param.as_deref()),
            Route::Healthz if read => Ok(ops::healthz(self)),
            Route::Readyz if read => Ok(ops::readyz(self)),
            Route::Cluster if read => Ok(ops::cluster(self)),
            Route::Metrics if read => Ok(metrics::render(self)),
            Route::OpenApi if read => Ok(json_bytes(StatusCode::OK, self.openapi.clone())),
            Route::Docs if read => docs::docs(req),

            Route::Products if read => catalog::list_products(self),
            Route::Products if m == Method::POST => catalog::create_product(self, req),
            Route::Product if read => catalog::get_product(self, req),
            Route::Product if m == Method::PUT => catalog::update_product(self, req),
            Route::Product if m == Method::DELETE => catalog::delete_product(self, req),
            Route::Customers if read => catalog::list_customers(self),
            Route::Customers if m == Method::POST => catalog::create_customer(self, req),
            Route::Customer if read => catalog::get_customer(self, req),
            Route::Customer if m == Method::PUT => catalog::update_customer(self, req),
            Route::Customer if m == Method::DELETE => catalog::delete_customer(self, req),

            Route::Orders if read => orders::list(self, req),
            Route::MyOrders if read => orders::my_orders(self, caller),
            Route::Orders if m == Method::POST => {
                orders::create(self, req, caller, orders::Placing::Orders)
            }
            Route::ScheduledOrders if m == Method::POST => {
                orders::create(self, req, caller, orders::Placing::Scheduled)
            }
            Route::CustomerOrders if read => orders::customer_orders(self, req),
            Route::CustomerOrders if m == Method::POST => {
                let customer = req.id("Customer not found")?;
                orders::create(self, req, caller, orders::Placing::ForCustomer(customer))
            }
            // The Order Management API places a customer's order here.
            Route::Order if m == Method::POST => {
                let customer = req.id("Customer not found")?;
                orders::create(self, req, caller, orders::Placing::TakingStock(customer))
            }
            Route::Order | Route::ProcessOrder if read => orders::get(self, req),
            Route::Order if m == Method::PUT => orders::set_status(self, req),
            Route::Order if m == Method::DELETE => orders::delete(self, req, caller),
            Route::OrderItems if m == Method::PUT => orders::replace_items(self, req),
            Route::ProcessOrder if m == Method::PUT => orders::process(self, req),
            Route::ProcessOrder if m == Method::DELETE => orders::delete(self, req, caller),
            Route::ApiCustomers if read => store::list_customers(self),
            Route::ApiOrders if m == Method::POST => store::create_order(self, req, caller),
            Route::StorePage if read => Ok(store::page()),
            route if route.blueprint_of().is_some() => {
                let same = route.blueprint_of().expect("checked");
                self.answer_now(same, req, caller)
            }
            Route::Lifecycle if m == Method::POST => lifecycle::transition(self, req, caller),
            Route::AssignDelivery if m == Method::PUT => fulfilment::assign(self, req),
            Route::OrderStatus if m == Method::PUT => fulfilment::set_status(self, req, caller),
            Route::DeliveryLocation if read => fulfilment::get_location(self, req),
            Route::DeliveryLocation if m == Method::PUT => {
                fulfilment::put_location(self, req, caller)
            }
            Route::CancelOrder if m == Method::POST => fulfilment::cancel(self, req, caller),
            Route::Export if read => export::export(self, req),
            Route::BulkStatus if m == Method::PUT => fulfilment::bulk_status(self, req),
            Route::BulkAssign if m == Method::POST => fulfilment::bulk_assign(self, req),
            Route::Feedback if m == Method::POST => fulfilment::feedback(self, req),
            Route::Templates if read => templates::list(self, req, caller),
            Route::Templates if m == Method::POST => templates::create(self, req, caller),
            Route::Template if read => templates::get(self, req, caller),
            Route::Template if m == Method::DELETE => templates::delete(self, req, caller),
            Route::TemplateOrder if m == Method::POST => templates::order(self, req, caller),
            Route::RequestReturn if m == Method::POST => fulfilment::request_return(self, req),
            Route::OrderReturn if m == Method::PUT => fulfilment::set_return(self, req),
            Route::Analytics if read => analytics::report(self, req),
            Route::Events if read => live::events(self, req, access::viewer(self, route, caller)),
            Route::TrackingStream if read => {
                live::tracking(self, req, access::viewer(self, route, caller))
            }
            Route::Views if read => Ok(live::views(self, access::viewer(self, route, caller))),
            Route::Board if read => Ok(live::board(self)),
            Route::CpeeCallbacks if read => cpee::callbacks(self, req),
            Route::CpeeCallback if m == Method::DELETE => cpee::callbacks(self, req),
            _ => Err(ApiError::method_not_allowed(route.allow())),
        }
    }
}

/// 403 for a request that did not come over https (`http.require_https`):
/// on the Order Status API the body its clients know, elsewhere the
/// broker's usual error.
fn https_required(path: &str) -> Response<Body> {
    if path == "/api/store/orders" || path.starts_with("/api/store/orders/") {
        return json_bytes(
            StatusCode::FORBIDDEN,
            r#"{"detail": "Please use https instead of http"}"#,
        );
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "use https: this broker answers requests over plain http only on /healthz and /readyz",
    )
    .into_response()
}

/// `OPTIONS`: the methods the route takes, and CORS preflight answers.
/// The request headers the API reads, the only ones a preflight allows.
const CORS_HEADERS: &str = "content-type, authorization, if-match, idempotency-key, \
     last-event-id, cpee-callback, cpee-callback-id, cpee-instance, cpee-instance-uuid, \
     cpee-instance-url, cpee-label, cpee-activity";

/// The response headers a page on another origin may read.
const CORS_EXPOSED: &str = "etag, location, x-next-cursor, link";

fn preflight(route: Route, _headers: &hyper::HeaderMap) -> Response<Body> {
    let allow = HeaderValue::from_static(route.allow());
    let requested = HeaderValue::from_static(CORS_HEADERS);
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

/// Tags a response with an order's version: `ETag: "3"`.
pub fn with_etag(response: &mut Response<Body>, version: crate::model::Version) {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{}\"", version.0)) {
        response.headers_mut().insert(header::ETAG, value);
    }
}

/// The version an `If-Match` header asks for: `"3"`, `W/"3"` or `3`; `*`
/// (any version) and no header are None. Anything else is 400.
pub fn if_match(req: &Req) -> Result<Option<crate::model::Version>, ApiError> {
    let Some(value) = req.headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse()
        .map(|v| Some(crate::model::Version(v)))
        .map_err(|_| ApiError::bad_request("If-Match must be an ETag such as \"3\""))
}

/// An order as JSON, the way the `/orders` API shows it.
pub fn order_json(
    broker: &Broker,
    id: crate::model::OrderId,
    order: &crate::model::Order,
    viewer: access::Viewer,
) -> Bytes {
    let symbols = broker.symbols();
    let body = orders::OrderBody::seen_by(viewer, id, order, &symbols);
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}
