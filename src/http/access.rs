//! What each caller may do, route by route. With auth off everything is
//! open. With auth on: writes need a token; staff, admin and service may do
//! everything; listing all orders and all customers is for staff and admin;
//! customers see and act on their own orders and record only; delivery
//! partners move the orders assigned to them and report where they are.
//! Groups named in `auth.open` (by default the board's views and ops) need
//! no token at all; anonymous engine writes may be held to `cpee_networks`.
//! Missing or bad token → 401 `{"detail": "Invalid token"}`; a valid token
//! without the right → 403.

use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::{App, Req, Route};
use crate::auth::{ApiGroup, Caller, Role};
use crate::model::OrderId;

/// Who a route lets in.
pub enum Need {
    /// Anyone, with or without a token.
    Nobody,
    /// Any valid token.
    Anyone,
    /// Staff, admin or service.
    Privileged,
    /// Staff or admin.
    StaffOrAdmin,
    /// A customer (acting on their own orders).
    Customer,
    /// Staff, admin, or a delivery partner (the broker checks the partner
    /// is the one assigned).
    StaffOrPartner,
    /// A delivery partner (the one assigned, checked by the broker).
    Partner,
    /// The customer who owns the order, only.
    OrderCustomer,
    /// Privileged, or the customer the path names.
    CustomerSelf,
    /// Privileged, or the customer who owns the order (named by the path,
    /// or for a lifecycle call by the body).
    OrderOwner,
    /// Who may read the order the path names: `OrderOwner`, or the
    /// delivery partner it is assigned to.
    OrderReader,
}

impl Need {
    /// Who may call, for the API description.
    pub fn who(&self) -> &'static str {
        match self {
            Need::Nobody => "anyone",
            Need::Anyone => "any valid token",
            Need::Privileged => "staff, admin, service",
            Need::StaffOrAdmin => "staff, admin",
            Need::StaffOrPartner => "staff, admin, or the assigned delivery partner",
            Need::Partner => "the assigned delivery partner",
            Need::OrderCustomer => "the order's customer",
            Need::Customer => "customer",
            Need::CustomerSelf => "staff, admin, service, or that customer",
            Need::OrderOwner => "staff, admin, service, or the order's customer",
            Need::OrderReader => {
                "staff, admin, service, the order's customer, or its assigned delivery partner"
            }
        }
    }
}

/// The API group a route belongs to; None for what is always open
/// (health, readiness, and the board and store pages, which hold no data
/// themselves). A Flask store blueprint route is in its broker route's.
pub fn group(route: Route) -> Option<ApiGroup> {
    if let Some(same) = route.blueprint_of() {
        return group(same);
    }
    Some(match route {
        Route::Healthz | Route::Readyz | Route::Board | Route::StorePage | Route::Docs => {
            return None;
        }
        Route::Update => ApiGroup::SeedWrites,
        Route::GetAll
        | Route::GetCurrentOrder
        | Route::GetCompletedOrders
        | Route::GetNewOrders
        | Route::GetStatus
        | Route::Events
        | Route::Views => ApiGroup::Views,
        Route::Intake
        | Route::NextOrder
        | Route::CpeeWait
        | Route::CpeeCallbacks
        | Route::CpeeCallback => ApiGroup::Cpee,
        Route::Products
        | Route::Product
        | Route::Customers
        | Route::Customer
        | Route::CustomerOrders
        | Route::Orders
        | Route::MyOrders
        | Route::Order
        | Route::OrderItems
        | Route::ProcessOrder
        // Decided above by the routes they serve, which are all here.
        | Route::ApiProducts
        | Route::ApiProduct
        | Route::ApiCustomers
        | Route::ApiCustomer
        | Route::ApiOrders
        | Route::ScheduledOrders
        | Route::Templates
        | Route::Template
        | Route::TemplateOrder => ApiGroup::Shop,
        Route::Lifecycle => ApiGroup::Lifecycle,
        Route::AssignDelivery
        | Route::OrderStatus
        | Route::DeliveryLocation
        | Route::CancelOrder
        | Route::Export
        | Route::BulkStatus
        | Route::BulkAssign
        | Route::Feedback
        | Route::RequestReturn
        | Route::OrderReturn
        | Route::Analytics
        | Route::TrackingStream => ApiGroup::Fulfilment,
        Route::Metrics | Route::OpenApi | Route::Cluster => ApiGroup::Ops,
    })
}

/// The groups `auth.open` opens (`protect_views` takes `views` out).
pub fn open_groups(auth: &crate::config::AuthConfig) -> Vec<ApiGroup> {
    let mut open = auth.open.clone();
    if auth.protect_views {
        open.retain(|g| *g != ApiGroup::Views);
    }
    open.sort_by_key(|g| *g as usize);
    open.dedup();
    open
}

/// Who a route and method let in when auth is on and its group is not open.
pub fn need(route: Route, method: &Method, param: Option<&str>) -> Need {
    if let Some(same) = route.blueprint_of() {
        return need(same, method, param);
    }
    let read = method == Method::GET || method == Method::HEAD;
    match route {
        Route::Healthz | Route::Readyz | Route::Board | Route::StorePage | Route::Docs => {
            Need::Nobody
        }
        Route::Metrics | Route::OpenApi | Route::Cluster => Need::Anyone,
        Route::GetAll
        | Route::GetCurrentOrder
        | Route::GetCompletedOrders
        | Route::GetNewOrders
        | Route::GetStatus
        | Route::Events
        | Route::Views => Need::Anyone,
        Route::Products | Route::Product if read => Need::Nobody,
        Route::Orders | Route::Customers if read => Need::StaffOrAdmin,
        // The handler ties a customer's order to them.
        Route::Orders | Route::ScheduledOrders => Need::Anyone,
        Route::MyOrders => Need::Customer,
        Route::Customer if read => Need::CustomerSelf,
        Route::CustomerOrders => Need::CustomerSelf,
        Route::Order | Route::ProcessOrder | Route::TrackingStream if read => Need::OrderReader,
        Route::Order | Route::ProcessOrder if method == Method::DELETE => Need::OrderOwner,
        // `POST /orders/{customer_id}`: the path names the customer.
        Route::Order if method == Method::POST => Need::CustomerSelf,
        Route::OrderItems => Need::OrderOwner,
        Route::Lifecycle if param == Some("cancel") => Need::OrderOwner,
        Route::AssignDelivery | Route::Export | Route::BulkStatus | Route::BulkAssign => {
            Need::StaffOrAdmin
        }
        Route::OrderStatus => Need::StaffOrPartner,
        Route::DeliveryLocation if read => Need::OrderOwner,
        Route::DeliveryLocation => Need::Partner,
        Route::CancelOrder => Need::OrderOwner,
        Route::Feedback | Route::RequestReturn => Need::OrderCustomer,
        Route::OrderReturn | Route::Analytics => Need::StaffOrAdmin,
        // The handlers scope customers to their own templates.
        Route::Templates | Route::Template | Route::TemplateOrder => Need::Anyone,
        _ => Need::Privileged,
    }
}

pub fn unauthorized() -> ApiError {
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "Invalid token")
        .with_body(json!({"detail": "Invalid token"}));
    e.www_authenticate = Some(HeaderValue::from_static("Bearer"));
    e
}

pub fn forbidden() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "Not enough permissions")
        .with_body(json!({"detail": "Not enough permissions"}))
}

/// The caller, if the route lets them in; None when auth is off.
pub fn authorize(app: &App, route: Route, req: &Req) -> Result<Option<Caller>, ApiError> {
    if !app.auth.enabled() {
        return Ok(None);
    }
    let caller = match req.headers.get(AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| unauthorized())?;
            Some(app.auth.identify(text).map_err(|_| unauthorized())?)
        }
    };
    let path_id = || req.param.as_deref().and_then(|p| p.parse::<u64>().ok());
    if let Some(group) = group(route).filter(|g| app.open_groups.contains(g)) {
        // An open group needs no token. An engine group with networks is
        // open only from them: elsewhere the usual rules apply, so a
        // customer's token does not make its caller an engine. A trusted
        // proxy is never the engine: it speaks for anyone behind it.
        let peer = req.peer.map(|ip| ip.to_canonical());
        let inside = !group.is_engine()
            || app.cpee_networks.is_empty()
            || (!app.is_trusted_proxy(peer)
                && peer.is_some_and(|ip| app.cpee_networks.iter().any(|n| n.contains(&ip))));
        if inside {
            return Ok(caller);
        }
    }
    let need = need(route, &req.method, req.param.as_deref());
    if matches!(need, Need::Nobody) {
        return Ok(caller);
    }
    let caller = caller.ok_or_else(unauthorized)?;
    let allowed = match need {
        Need::Nobody | Need::Anyone => true,
        Need::Privileged => caller.is_privileged(),
        Need::StaffOrAdmin => matches!(caller.role, Role::Staff | Role::Admin),
        Need::StaffOrPartner => matches!(caller.role, Role::Staff | Role::Admin | Role::Delivery),
        Need::Partner => caller.role == Role::Delivery,
        Need::Customer => caller.customer_id().is_some(),
        Need::CustomerSelf => {
            let id = path_id();
            caller.is_privileged() || (id.is_some() && caller.customer_id() == id)
        }
        // A lifecycle call names its order in the body: the handler checks
        // the order it resolved and acts on (`owns`), so the check and the
        // change can never read two different orders.
        Need::OrderOwner if route == Route::Lifecycle => true,
        Need::OrderOwner => caller.is_privileged() || owns_path_order(app, req, &caller),
        Need::OrderReader => {
            caller.is_privileged() || {
                let broker = app.broker();
                let _pin = broker.pin();
                path_order(app, req).is_some_and(|o| {
                    owns(&caller, &o) || assigned_to(&caller, &o, &broker.symbols())
                })
            }
        }
        Need::OrderCustomer => owns_path_order(app, req, &caller),
    };
    if allowed {
        Ok(Some(caller))
    } else {
        Err(forbidden())
    }
}

/// The order the path names, if it exists.
fn path_order(app: &App, req: &Req) -> Option<crate::model::Order> {
    req.param
        .as_deref()
        .and_then(|p| p.parse::<u64>().ok())
        .and_then(|id| app.broker().get(OrderId(id)))
}

/// Whether the caller is the customer of the order the path names.
fn owns_path_order(app: &App, req: &Req, caller: &Caller) -> bool {
    path_order(app, req).is_some_and(|o| owns(caller, &o))
}

/// Whether `caller` is the delivery partner `order` is assigned to (its
/// orderbot id is the partner's id); read under a pin.
fn assigned_to(
    caller: &Caller,
    order: &crate::model::Order,
    symbols: &crate::symbols::SymbolsReader<'_>,
) -> bool {
    let partner = caller.partner_id();
    partner.is_some() && order.orderbot_id.map(|b| symbols.text(b)) == partner
}

/// A partner id as the viewer of streams keeps it: keyed at random per
/// process, so no client can aim two ids at one key.
pub fn partner_key(id: &str) -> u64 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEY.get_or_init(Default::default).hash_one(id)
}

/// Whether `caller` is the customer of `order`: the one ownership rule.
pub fn owns(caller: &Caller, order: &crate::model::Order) -> bool {
    let owner = order.shop.as_ref().and_then(|s| s.customer_id).map(|c| c.0);
    owner.is_some() && owner == caller.customer_id()
}

/// With auth on, whether `caller` may act on `order` as an `OrderOwner`
/// route lets them: privileged, or its customer.
pub fn may_act_on(caller: Option<&Caller>, order: &crate::model::Order) -> bool {
    caller.is_none_or(|c| c.is_privileged() || owns(c, order))
}

/// How much of an order a caller may see. A board's fields (id, status,
/// stage, orderbot, version, times) are public; the rest (customer, items,
/// notes, money, delivery, location, return, feedback) only to whoever may
/// `GET /orders/{id}`. Every read path — single reads, lists, exports,
/// views, live and replayed streams, CPEE answers — asks this one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// Auth off, staff, admin, service, or an anonymous caller of an open
    /// group other than `views` (which gets the whole group, as with auth off).
    Everything,
    /// A customer: everything of their own orders, the board's fields of others.
    Customer(u64),
    /// A delivery partner (by [`partner_key`] of their id): everything of
    /// the orders assigned to them, the board's fields of others.
    Partner(u64),
    /// Anyone else: the board's fields only.
    Board,
}

impl Viewer {
    /// Whether this viewer sees all of `order`, not only its board fields
    /// (its texts read with `symbols`).
    pub fn sees_all_of(
        self,
        order: &crate::model::Order,
        symbols: &crate::symbols::SymbolsReader<'_>,
    ) -> bool {
        let owner = order.shop.as_ref().and_then(|s| s.customer_id).map(|c| c.0);
        let assignee = order.orderbot_id.map(|b| partner_key(symbols.text(b)));
        self.sees_all_of_one(owner, assignee)
    }

    /// Whether this viewer sees all of an order whose customer is `owner`
    /// and whose delivery partner has the [`partner_key`] `assignee`.
    pub fn sees_all_of_one(self, owner: Option<u64>, assignee: Option<u64>) -> bool {
        match self {
            Viewer::Everything => true,
            Viewer::Customer(c) => owner == Some(c),
            Viewer::Partner(p) => assignee == Some(p),
            Viewer::Board => false,
        }
    }
}

/// What `caller` may see of orders on `route`.
pub fn viewer(app: &App, route: Route, caller: Option<&Caller>) -> Viewer {
    if !app.auth.enabled() {
        return Viewer::Everything;
    }
    match caller {
        Some(c) if c.is_privileged() => Viewer::Everything,
        Some(c) => match (c.customer_id(), c.partner_id()) {
            (Some(customer), _) => Viewer::Customer(customer),
            (None, Some(partner)) => Viewer::Partner(partner_key(partner)),
            (None, None) => Viewer::Board,
        },
        // The board's views are public; nothing private comes with them.
        None if group(route) == Some(ApiGroup::Views) => Viewer::Board,
        None => Viewer::Everything,
    }
}
