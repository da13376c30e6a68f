//! `GET /analytics/{report}` (staff, admin): revenue, delivery-performance,
//! top-customers, cancellation-rate, stage-times — read from the aggregates
//! in [`crate::analytics`], never by scanning orders.

use hyper::{Response, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::{App, Body, Req, json_response};
use crate::catalog::CustomerId;
use crate::model::{Millis, Stage};
use crate::money::Money;

/// One of the reports, by the name in the path.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum Report {
    Revenue(Revenue),
    DeliveryPerformance(DeliveryPerformance),
    TopCustomers(TopCustomers),
    CancellationRate(CancellationRate),
    StageTimes(StageTimes),
}

/// `revenue`: money charged less given back and refunded, per bucket.
#[derive(Serialize, ToSchema)]
pub(super) struct Revenue {
    /// day or hour.
    bucket: &'static str,
    from: u64,
    to: u64,
    total: Money,
    buckets: Vec<RevenueBucket>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct RevenueBucket {
    /// The bucket's start, ms since the epoch.
    start: u64,
    revenue: Money,
}

/// `delivery-performance`: confirmed to delivered, per partner.
#[derive(Serialize, ToSchema)]
pub(super) struct DeliveryPerformance {
    measured: &'static str,
    partners: Vec<PartnerTimes>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct PartnerTimes {
    partner_id: String,
    deliveries: u64,
    mean_secs: f64,
    p50_secs: f64,
    p90_secs: f64,
}

/// `top-customers`: by money spent.
#[derive(Serialize, ToSchema)]
pub(super) struct TopCustomers {
    customers: Vec<TopCustomer>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TopCustomer {
    customer_id: CustomerId,
    name: Option<String>,
    spent: Money,
    orders: u64,
}

/// `cancellation-rate`.
#[derive(Serialize, ToSchema)]
pub(super) struct CancellationRate {
    orders: u64,
    cancelled: u64,
    completed: u64,
    /// cancelled / orders (0 with no orders).
    rate: f64,
    /// Changes the aggregates could not follow (the feed outran them).
    missed_catch_ups: u64,
}

/// `stage-times`: time in each stage per orderbot.
#[derive(Serialize, ToSchema)]
pub(super) struct StageTimes {
    stage_times: Vec<StageTime>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct StageTime {
    orderbot_id: Option<String>,
    stage: Stage,
    count: u64,
    mean_secs: f64,
    p50_secs: f64,
    p90_secs: f64,
}

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
    // Every parameter is checked whichever report it is for: a bad one is
    // refused, not ignored.
    let bucket = match get("bucket").unwrap_or("day") {
        "day" => DAY_MS,
        "hour" => HOUR_MS,
        _ => return Err(ApiError::bad_request("bucket must be day or hour")),
    };
    let (to, from) = (number("to")?, number("from")?);
    let limit = number("limit")?.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1 to 100"));
    }
    let analytics = &app.analytics;
    let body = match req.param.as_deref() {
        Some("revenue") => {
            let to = to.unwrap_or_else(|| Millis::now().0 + 1);
            let from = from.unwrap_or(to.saturating_sub(7 * DAY_MS));
            if from >= to {
                return Err(ApiError::bad_request("from must be before to"));
            }
            if (to - from) / bucket > MAX_BUCKETS {
                return Err(ApiError::bad_request(format!(
                    "at most {MAX_BUCKETS} buckets: narrow from/to or use bucket=day"
                )));
            }
            let (buckets, total) = analytics.revenue(Millis(from), Millis(to), bucket);
            let buckets = buckets
                .into_iter()
                .map(|(start, revenue)| RevenueBucket { start, revenue })
                .collect();
            let name = if bucket == DAY_MS { "day" } else { "hour" };
            Report::Revenue(Revenue {
                bucket: name,
                from,
                to,
                total,
                buckets,
            })
        }
        Some("delivery-performance") => {
            let partners = analytics
                .delivery()
                .into_iter()
                .map(|(partner_id, d)| PartnerTimes {
                    partner_id,
                    deliveries: d.count,
                    mean_secs: d.mean_secs,
                    p50_secs: d.p50_secs,
                    p90_secs: d.p90_secs,
                })
                .collect();
            Report::DeliveryPerformance(DeliveryPerformance {
                measured: "confirmed to delivered",
                partners,
            })
        }
        Some("top-customers") => {
            let customers = analytics
                .top_customers(limit as usize)
                .into_iter()
                .map(|(customer_id, spent, orders)| TopCustomer {
                    customer_id,
                    name: app.broker().customer(customer_id).map(|c| c.name),
                    spent,
                    orders,
                })
                .collect();
            Report::TopCustomers(TopCustomers { customers })
        }
        Some("cancellation-rate") => {
            let (orders, cancelled, completed, missed) = analytics.counts();
            let rate = if orders == 0 {
                0.0
            } else {
                cancelled as f64 / orders as f64
            };
            Report::CancellationRate(CancellationRate {
                orders,
                cancelled,
                completed,
                rate,
                missed_catch_ups: missed,
            })
        }
        Some("stage-times") => {
            let stage_times = analytics
                .stage_times()
                .into_iter()
                .map(|(orderbot_id, stage, d)| StageTime {
                    orderbot_id,
                    stage,
                    count: d.count,
                    mean_secs: d.mean_secs,
                    p50_secs: d.p50_secs,
                    p90_secs: d.p90_secs,
                })
                .collect();
            Report::StageTimes(StageTimes { stage_times })
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
