//! `GET /openapi.json`: an OpenAPI 3.1 description of every route and
//! method the router answers, built once at start. The operations and
//! their texts are the table in `ops.rs`; every schema is derived with
//! `utoipa` from the very types the handlers read and write. Security
//! follows the configured auth: none when auth is off; optional on open
//! groups (`auth.open`); a bearer or `token` credential elsewhere.
//!
//! Each operation carries a request example and, in `x-example-status`,
//! what that example gets on a broker holding product 1, customer 1 and
//! order 1; `x-who` says who may call it when auth is on (from
//! `access::need`). `tests/openapi.rs` sends every example and checks the
//! answer, and that its body validates against the documented schema.

mod ops;

use std::collections::BTreeMap;

use bytes::Bytes;
use hyper::Method;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

use super::Route;
use super::access::{Need, need};
use crate::auth::ApiGroup;
use ops::{Op, ParamType};

/// The schemas the document's operations name, by name.
#[derive(Default)]
pub(super) struct Registry {
    schemas: BTreeMap<String, Value>,
}

impl Registry {
    /// A reference to `T`'s schema, registering it and what it names.
    pub(super) fn of<T: ToSchema>(&mut self) -> Value {
        let mut named = Vec::new();
        T::schemas(&mut named);
        named.push((T::name().into_owned(), T::schema()));
        for (name, schema) in named {
            let schema = serde_json::to_value(schema).unwrap_or_default();
            let known = self.schemas.entry(name.clone()).or_insert(schema.clone());
            // Two types under one name would describe one of them wrongly.
            assert!(*known == schema, "two schemas are named {name}");
        }
        json!({"$ref": format!("#/components/schemas/{}", T::name())})
    }

    /// An array of `T`.
    pub(super) fn list<T: ToSchema>(&mut self) -> Value {
        json!({"type": "array", "items": self.of::<T>()})
    }
}

/// What the document needs of the config besides the routes.
pub struct Policy<'a> {
    /// Whether any token or JWT secret is configured.
    pub auth: bool,
    /// The groups that need no token (`auth.open`, less `views` with
    /// `auth.protect_views`).
    pub open: &'a [ApiGroup],
}

/// The OpenAPI document for the router's `paths` (route, path) pairs.
pub fn document(paths: &[(&str, Route)], policy: &Policy<'_>) -> Bytes {
    let mut registry = Registry::default();
    let ops = ops::ops(&mut registry);
    let error = registry.of::<super::error::ErrorBody>();
    let denied = registry.of::<super::error::Denied>();
    let mut out: Map<String, Value> = Map::new();
    let mut seen_routes: BTreeMap<&str, usize> = BTreeMap::new();
    for (path, route) in paths {
        // The store tutorial's paths are described as the routes they serve
        // as. A route served at several paths (those, the seed's update
        // aliases) gets operation ids that name the path after the first.
        let route = &route.blueprint_of().unwrap_or(*route);
        let n = seen_routes.entry(route.name()).or_default();
        let suffix = if *n == 0 {
            String::new()
        } else {
            format!(
                "_at{}",
                path.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            )
        };
        *n += 1;
        // matchit's catch-all `{*file}` is OpenAPI's `{file}`.
        let path = path.replace("{*", "{");
        let mut item = Map::new();
        for op in ops.iter().filter(|o| o.route == *route) {
            let operation = operation(op, &path, policy, &error, &denied, &suffix);
            item.insert(op.method.as_str().to_lowercase(), operation.clone());
            if op.method == Method::GET && route.allow().contains("HEAD") {
                item.insert("head".into(), head(&operation));
            }
        }
        item.insert("options".into(), options(*route, &path, &suffix));
        out.insert(path.to_string(), Value::Object(item));
    }
    let security_note = if policy.auth {
        "With auth on, send Authorization: Bearer <jwt or token> (or token <t>); each \
         operation's security says whether it needs one, x-who who may call."
    } else {
        "Auth is off on this broker: no operation needs a token."
    };
    let doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "order-broker",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("An in-memory, concurrent order-state broker: the seed \
                order_store API, shop orders, live views and CPEE's protocol. Errors are \
                {{\"error\": \"...\"}} unless an API's own shape is named. {security_note}"),
        },
        "components": {
            "schemas": registry.schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A JWT signed with auth.jwt_secret, or a static token of auth.tokens.",
                },
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <t>`: a static token of auth.tokens.",
                },
            },
        },
        "tags": [
            {"name": "seed_writes", "description": "The seed order_store's update (what CPEE calls)."},
            {"name": "views", "description": "The board's reads: the seed's views, /views, /events."},
            {"name": "cpee", "description": "CPEE's protocol: intake, next-order, wait, callbacks."},
            {"name": "shop", "description": "Products, customers, orders with items, processing, templates."},
            {"name": "lifecycle", "description": "The Order Status API."},
            {"name": "fulfilment", "description": "Delivery, cancellation, returns, feedback, bulk, export, analytics."},
            {"name": "ops", "description": "/metrics and /openapi.json."},
            {"name": "always_open", "description": "Health, readiness, the board page and these docs."},
        ],
        "paths": out,
    });
    Bytes::from(serde_json::to_vec_pretty(&doc).expect("a JSON value serializes"))
}

/// One operation's object, with the answers every operation of its kind
/// may give added to those the table names.
fn operation(
    op: &Op,
    path: &str,
    policy: &Policy<'_>,
    error: &Value,
    denied: &Value,
    suffix: &str,
) -> Value {
    let param = op
        .params
        .iter()
        .find(|p| p.place == "path")
        .map(|p| p.example);
    let group = super::access::group(op.route);
    let open = !policy.auth || group.is_some_and(|g| policy.open.contains(&g));
    let need = need(op.route, &op.method, param);
    let nobody = matches!(need, Need::Nobody);
    let who = if open || nobody { "anyone" } else { need.who() };
    let write = op.method != Method::GET;
    let mut responses = Map::new();
    let add = |responses: &mut Map<String, Value>, code: u16, description: &str, schema: &Value| {
        responses.entry(code.to_string()).or_insert_with(|| {
            json!({"description": description, "content": {"application/json": {"schema": schema}}})
        });
    };
    for r in &op.responses {
        let mut response = json!({"description": r.description});
        if !r.content.is_empty() {
            let content: Map<String, Value> = r
                .content
                .iter()
                .map(|(media, schema)| (media.to_string(), json!({"schema": schema})))
                .collect();
            response["content"] = Value::Object(content);
        }
        if !r.headers.is_empty() {
            let headers: Map<String, Value> = r
                .headers
                .iter()
                .map(|(name, description)| {
                    (
                        name.to_string(),
                        json!({"description": description, "schema": {"type": "string"}}),
                    )
                })
                .collect();
            response["headers"] = Value::Object(headers);
        }
        responses.insert(r.status.to_string(), response);
    }
    if op.body.is_some() {
        add(
            &mut responses,
            400,
            "The body is not valid JSON (or not a valid form).",
            error,
        );
        add(
            &mut responses,
            413,
            "The body is larger than limits.max_body_bytes.",
            error,
        );
        add(&mut responses, 415, "An unsupported Content-Type.", error);
        if !op.form {
            add(
                &mut responses,
                422,
                "Valid JSON of the wrong shape: a field missing, unknown, mistyped or out of range.",
                error,
            );
        }
    }
    if write {
        add(&mut responses, 400, "A bad Idempotency-Key.", error);
        add(
            &mut responses,
            409,
            "A request with this Idempotency-Key is still running.",
            error,
        );
        add(
            &mut responses,
            422,
            "This Idempotency-Key was used for a different request.",
            error,
        );
        add(
            &mut responses,
            429,
            "The caller holds too many Idempotency-Keys.",
            error,
        );
        add(
            &mut responses,
            503,
            "The journal cannot be written (or too many Idempotency-Keys are in use).",
            error,
        );
    }
    if op.params.iter().any(|p| p.place == "query") {
        add(&mut responses, 400, "A bad query string.", error);
    }
    if !open && !nobody {
        add(
            &mut responses,
            401,
            "No token, or one that is not valid.",
            denied,
        );
        // Any token may pass the route's rule and still be refused by the
        // handler (another customer's record): 403 in auth's shape, next
        // to the broker's own 403 where the table names one.
        match responses.get_mut("403") {
            Some(own) => {
                let schema = json!({"anyOf": [error, denied]});
                own["content"]["application/json"]["schema"] = schema;
            }
            None => add(
                &mut responses,
                403,
                "The token does not allow this.",
                denied,
            ),
        }
    }
    // A path parameter only where the path has it (`/docs` and `/docs/{file}`).
    let mut parameters: Vec<Value> = op
        .params
        .iter()
        .filter(|p| p.place != "path" || path.contains(&format!("{{{}}}", p.name)))
        .map(parameter)
        .collect();
    if write {
        parameters.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Retries with the same key get the first answer instead of a second change.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        }));
    }
    let mut operation = json!({
        "summary": op.summary,
        "operationId": format!("{}_{}{suffix}", op.route.name(), op.method.as_str().to_lowercase()),
        "x-who": who,
        "x-group": group.map(|g| g.name()),
        "tags": [tag(op.route)],
        "x-example-status": op.responses[0].status,
        "parameters": parameters,
        "responses": responses,
    });
    // An open group takes no token (one may show more); any other needs one.
    operation["security"] = if !policy.auth {
        json!([])
    } else if open || nobody {
        json!([{}, {"bearer": []}, {"token": []}])
    } else {
        json!([{"bearer": []}, {"token": []}])
    };
    if let Some(schema) = &op.body {
        let mut content = Map::new();
        let mut json_body = json!({"schema": schema});
        if let Some(example) = op.example {
            // A time an example needs in the future: an hour after start.
            let soon = (crate::model::Millis::now().0 + 3_600_000).to_string();
            let example = example.replace("\"{in an hour}\"", &soon);
            json_body["example"] = serde_json::from_str(&example).expect("examples are JSON");
        }
        content.insert("application/json".into(), json_body);
        if op.form {
            let form = form_schema();
            for media in ["application/x-www-form-urlencoded", "multipart/form-data"] {
                content.insert(media.into(), json!({"schema": form}));
            }
        }
        operation["requestBody"] = json!({"required": op.body_required, "content": content});
    }
    operation
}

/// A form's fields are all text.
fn form_schema() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn parameter(p: &ops::Param) -> Value {
    let schema = match p.ty {
        ParamType::Text => json!({"type": "string"}),
        ParamType::Id => json!({"type": "integer", "minimum": 0}),
        ParamType::Count(min, max) => json!({"type": "integer", "minimum": min, "maximum": max}),
        ParamType::OneOf(words) => json!({"type": "string", "enum": words}),
    };
    let mut out = json!({
        "name": p.name,
        "in": p.place,
        "required": p.place == "path",
        "description": p.description,
        "schema": schema,
    });
    if !p.example.is_empty() {
        out["example"] = json!(p.example);
    }
    out
}

/// HEAD: GET's answers without their bodies.
fn head(get: &Value) -> Value {
    let mut head = get.clone();
    let id = get["operationId"]
        .as_str()
        .unwrap_or_default()
        .replacen("_get", "_head", 1);
    head["operationId"] = json!(id);
    head["summary"] = json!(format!(
        "{} (headers only)",
        get["summary"].as_str().unwrap_or_default()
    ));
    if let Some(responses) = head["responses"].as_object_mut() {
        for response in responses.values_mut() {
            if let Some(r) = response.as_object_mut() {
                r.remove("content");
            }
        }
    }
    head
}

/// OPTIONS: the methods the route takes, and CORS preflights; no token.
fn options(route: Route, path: &str, suffix: &str) -> Value {
    let parameters: Vec<Value> = path
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
        .map(|(name, _)| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    json!({
        "parameters": parameters,
        "summary": "The methods this path takes (Allow), and CORS preflight answers.",
        "operationId": format!("{}_options{suffix}", route.name()),
        "x-who": "anyone",
        "tags": [tag(route)],
        "x-example-status": 204,
        "security": [],
        "responses": {"204": {
            "description": "Allow names the methods.",
            "headers": {"Allow": {"schema": {"type": "string"}, "description": route.allow()}},
        }},
    })
}

/// The page section an operation is listed under: its API group.
fn tag(route: Route) -> &'static str {
    super::access::group(route).map_or("always_open", |g| g.name())
}

/// Schema of a field that is text or a number (`table_number`, `orderbot_id`).
pub(super) fn text_or_number() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

/// Schema of an order id a seed client sends: a non-negative integer, as
/// a number or as decimal text.
pub(super) fn order_number() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]+$")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn doc(config: &Config) -> Value {
        let routes = super::super::routes(config);
        let policy = Policy {
            auth: true,
            open: &super::super::access::open_groups(&config.auth),
        };
        serde_json::from_slice(&document(&routes, &policy)).unwrap()
    }

    /// Every route and method the router answers is described at every
    /// path it is served at: a route added later without an operation
    /// fails here.
    #[test]
    fn every_route_and_method_the_router_answers_is_described() {
        let mut config = Config::default();
        config.order_store.url_update_aliases = vec!["/update-order".into()];
        let routes = super::super::routes(&config);
        let doc = doc(&config);
        for route in Route::ALL {
            let paths: Vec<String> = routes
                .iter()
                .filter(|(_, r)| *r == route)
                .map(|(p, _)| p.replace("{*", "{"))
                .collect();
            assert!(!paths.is_empty(), "{} has no path", route.name());
            for path in paths {
                for method in route.allow().split(", ") {
                    let op = &doc["paths"][&path][method.to_lowercase()];
                    assert!(op.is_object(), "{method} {path} is not described");
                }
            }
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut config = Config::default();
        config.order_store.url_update_aliases = vec!["/update-order".into()];
        let doc = doc(&config);
        let mut seen = std::collections::HashSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let id = op["operationId"].as_str().unwrap().to_string();
                assert!(seen.insert(id.clone()), "operationId {id} twice");
            }
        }
    }

    /// Every operation is listed under a declared section (its group).
    #[test]
    fn every_operation_has_a_declared_tag() {
        let doc = doc(&Config::default());
        let declared: Vec<&str> = doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let tag = op["tags"][0].as_str().unwrap_or_default();
                assert!(declared.contains(&tag), "{method} {path}: tag {tag:?}");
            }
        }
    }

    /// Security follows the policy: open groups and what is always open
    /// take no token; the rest need one; with auth off nothing does.
    #[test]
    fn security_follows_the_auth_policy() {
        let config = Config::default();
        let doc = doc(&config);
        let security = |path: &str, method: &str| doc["paths"][path][method]["security"].clone();
        let required = json!([{"bearer": []}, {"token": []}]);
        assert_eq!(security("/orders", "post"), required);
        assert_eq!(
            security("/update_order", "put"),
            required,
            "seed writes are not open by default"
        );
        assert_ne!(
            security("/get_all", "get"),
            required,
            "views are open by default"
        );
        assert_ne!(security("/healthz", "get"), required);
        assert!(doc["paths"]["/orders"]["post"]["responses"]["401"].is_object());
        assert!(doc["paths"]["/orders/export"]["get"]["responses"]["403"].is_object());
        assert!(doc["paths"]["/get_all"]["get"]["responses"]["401"].is_null());
        // A route's rule refuses in auth's shape, the broker in its own
        // (schemathesis found `{"detail"}` documented as `{"error"}`).
        let refused = &doc["paths"]["/orders/{id}/delivery-location"]["put"]["responses"]["403"];
        let refused = refused["content"]["application/json"]["schema"].to_string();
        assert!(
            refused.contains("Denied") && refused.contains("ErrorBody"),
            "{refused}"
        );
        // The Order Status API refuses in the seed's shape, a bad header
        // in the broker's (schemathesis: a bad Idempotency-Key).
        let lifecycle = &doc["paths"]["/api/store/orders/{action}"]["post"]["responses"]["400"];
        let lifecycle = lifecycle["content"]["application/json"]["schema"].to_string();
        assert!(
            lifecycle.contains("Refusal") && lifecycle.contains("ErrorBody"),
            "{lifecycle}"
        );
        let other = &doc["paths"]["/templates/{id}"]["get"]["responses"]["403"];
        assert!(
            other.is_object(),
            "a customer asking for another's template"
        );
        let routes = super::super::routes(&config);
        let off: Value = serde_json::from_slice(&document(
            &routes,
            &Policy {
                auth: false,
                open: &[],
            },
        ))
        .unwrap();
        assert_eq!(off["paths"]["/orders"]["post"]["security"], json!([]));
        assert!(off["paths"]["/orders"]["post"]["responses"]["401"].is_null());
    }
}
