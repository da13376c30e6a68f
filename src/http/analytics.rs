//! `GET /analytics/{report}` (staff, admin): revenue, delivery-performance,
//! top-customers, cancellation-rate, stage-times — read from the aggregates
//! in [`crate::analytics`], never by scanning orders.

use hyper::{Response, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::{App, Body, Req, json_response};
use crate::model::Millis;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// Most buckets one revenue report may hold.
const MAX_BUCKETS: u64 = 10_000;

pub fn report(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let query = req.query()?;
    let get = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let number = |key: &str| {
        get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("{key} must be a non-negative integer"))
                })
            })
            .transpose()
    };
    let analytics = &app.analytics;
    let body = match req.param.as_deref() {
        Some("revenue") => {
            let bucket = match get("bucket").unwrap_or("day") {
                "day" => DAY_MS,
                "hour" => HOUR_MS,
                _ => return Err(ApiError::bad_request("bucket must be day or hour")),
            };
            let to = number("to")?.unwrap_or_else(|| Millis::now().0 + 1);
            let from = number("from")?.unwrap_or(to.saturating_sub(7 * DAY_MS));
            if from >= to {
                return Err(ApiError::bad_request("from must be before to"));
            }
            if (to - from) / bucket > MAX_BUCKETS {
                return Err(ApiError::bad_request(format!(
                    "at most {MAX_BUCKETS} buckets: narrow from/to or use bucket=day"
                )));
            }
            let (buckets, total) = analytics.revenue(Millis(from), Millis(to), bucket);
            let buckets: Vec<_> = buckets
                .into_iter()
                .map(|(start, revenue)| json!({"start": start, "revenue": revenue}))
                .collect();
            let name = if bucket == DAY_MS { "day" } else { "hour" };
            json!({"bucket": name, "from": from, "to": to, "total": total, "buckets": buckets})
        }
        Some("delivery-performance") => {
            let partners: Vec<_> = analytics
                .delivery()
                .into_iter()
                .map(|(partner, d)| {
                    json!({"partner_id": partner, "deliveries": d.count, "mean_secs": d.mean_secs,
                           "p50_secs": d.p50_secs, "p90_secs": d.p90_secs})
                })
                .collect();
            json!({"measured": "confirmed to delivered", "partners": partners})
        }
        Some("top-customers") => {
            let limit = number("limit")?.unwrap_or(10);
            if !(1..=100).contains(&limit) {
                return Err(ApiError::bad_request("limit must be 1 to 100"));
            }
            let customers: Vec<_> = analytics
                .top_customers(limit as usize)
                .into_iter()
                .map(|(id, spent, orders)| {
                    let name = app.broker().customer(id).map(|c| c.name);
                    json!({"customer_id": id, "name": name, "spent": spent, "orders": orders})
                })
                .collect();
            json!({"customers": customers})
        }
        Some("cancellation-rate") => {
            let (orders, cancelled, completed, missed) = analytics.counts();
            let rate = if orders == 0 {
                0.0
            } else {
                cancelled as f64 / orders as f64
            };
            json!({"orders": orders, "cancelled": cancelled, "completed": completed, "rate": rate, "missed_catch_ups": missed})
        }
        Some("stage-times") => {
            let rows: Vec<_> = analytics
                .stage_times()
                .into_iter()
                .map(|(bot, stage, d)| {
                    json!({"orderbot_id": bot, "stage": stage, "count": d.count, "mean_secs": d.mean_secs,
                           "p50_secs": d.p50_secs, "p90_secs": d.p90_secs})
                })
                .collect();
            json!({"stage_times": rows})
        }
        _ => {
            return Err(ApiError::not_found(
                "unknown report; one of revenue, delivery-performance, top-customers, \
                 cancellation-rate, stage-times",
            ));
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}
