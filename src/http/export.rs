//! `GET /orders/export?format=csv|ndjson|json`: every order the filters of
//! `GET /orders` select, streamed a page at a time, so exporting millions of
//! orders holds one page in memory, not the export.

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use super::error::ApiError;
use super::orders::{OrderBody, filter};
use super::{App, Body, Req};
use crate::broker::{Broker, OrderFilter};
use crate::model::{Order, OrderId};
use crate::symbols::SymbolsReader;

/// Orders read and rendered per chunk of the body.
const PAGE: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
    Json,
}

/// The CSV columns (RFC 4180, with this header row). Items are written as
/// `product_id x quantity` joined by `; `.
const COLUMNS: [&str; 18] = [
    "id",
    "number",
    "status",
    "stage",
    "orderbot_id",
    "customer_id",
    "channel",
    "table_number",
    "items",
    "total",
    "tax",
    "service_charge",
    "grand_total",
    "payment_status",
    "version",
    "created",
    "updated",
    "notes",
];

pub fn export(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let mut format = Format::Json;
    for (key, value) in req.query()? {
        if key == "format" {
            format = match value.as_str() {
                "csv" => Format::Csv,
                "ndjson" => Format::Ndjson,
                "json" => Format::Json,
                _ => return Err(ApiError::bad_request("format must be csv, ndjson or json")),
            };
        }
    }
    let (content_type, file) = match format {
        Format::Csv => ("text/csv; charset=utf-8; header=present", "orders.csv"),
        Format::Ndjson => ("application/x-ndjson", "orders.ndjson"),
        Format::Json => ("application/json", "orders.json"),
    };
    let mut response = stream(app, filter(app, req, PAGE)?, format);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `GET /orders` without a page asked for: every order `filter` selects,
/// as one JSON array, streamed.
pub(super) fn json_array(app: &App, filter: OrderFilter) -> Response<Body> {
    let mut response = stream(app, filter, Format::Json);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The orders `filter` selects, rendered a page at a time as the body is
/// sent, so the whole answer is never in memory.
fn stream(app: &App, filter: OrderFilter, format: Format) -> Response<Body> {
    let state = Export {
        broker: app.broker().clone(),
        filter: Some(OrderFilter {
            limit: PAGE,
            ..filter
        }),
        format,
        first: true,
    };
    let body = StreamBody::new(futures_util::stream::unfold(state, Export::next_chunk));
    let mut response = Response::new(BodyExt::boxed_unsync(body));
    *response.status_mut() = StatusCode::OK;
    response
}

struct Export {
    broker: Broker,
    /// The next page's filter; None once the end was written.
    filter: Option<OrderFilter>,
    format: Format,
    first: bool,
}

impl Export {
    async fn next_chunk(
        mut self,
    ) -> Option<(Result<Frame<Bytes>, std::convert::Infallible>, Export)> {
        let mut filter = self.filter.take()?;
        // Reading a page is quick and never waits, so it runs inline.
        let mut out = Vec::new();
        let next = {
            let broker = self.broker.clone();
            let _pin = broker.pin();
            let (page, next) = self.broker.list_orders(&filter);
            out.reserve(page.len() * 256 + 64);
            if self.first {
                self.start(&mut out);
            }
            self.write_page(&page, &mut out);
            next
        };
        match next {
            Some(after) => {
                filter.after = Some(after);
                self.filter = Some(filter);
            }
            None if self.format == Format::Json => out.extend_from_slice(b"]\n"),
            None => {}
        }
        Some((Ok(Frame::data(Bytes::from(out))), self))
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        match self.format {
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(&mut *out);
                let _ = writer.write_record(COLUMNS);
                let _ = writer.flush();
            }
            Format::Json => out.push(b'['),
            Format::Ndjson => {}
        }
    }

    fn write_page(&mut self, page: &[(OrderId, Order)], out: &mut Vec<u8>) {
        let symbols = self.broker.symbols();
        match self.format {
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(&mut *out);
                for (id, order) in page {
                    let _ = writer.write_record(csv_row(*id, order, &symbols));
                }
                let _ = writer.flush();
            }
            Format::Ndjson | Format::Json => {
                for (id, order) in page {
                    if self.format == Format::Json && !std::mem::take(&mut self.first) {
                        out.push(b',');
                    }
                    let body = OrderBody::new(*id, order, &symbols);
                    // Our own types serialize to memory without fail.
                    let _ = serde_json::to_writer(&mut *out, &body);
                    if self.format == Format::Ndjson {
                        out.push(b'\n');
                    }
                }
            }
        }
        self.first = false;
    }
}

/// A client's text as a CSV cell a spreadsheet shows as text: one that
/// would start a formula (`=`, `+`, `-`, `@`, a tab or a carriage return)
/// gets a leading `'` (OWASP's advice against formula injection).
fn cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    }
}

fn csv_row(id: OrderId, order: &Order, symbols: &SymbolsReader<'_>) -> [String; 18] {
    let shop = order.shop.as_deref();
    let text = |f: &dyn Fn(&crate::shop::ShopOrder) -> String| shop.map(f).unwrap_or_default();
    [
        id.to_string(),
        text(&|s| s.number.clone()),
        cell(symbols.text(order.status)),
        order.stage.to_string(),
        order
            .orderbot_id
            .map(|b| cell(symbols.text(b)))
            .unwrap_or_default(),
        text(&|s| s.customer_id.map(|c| c.0.to_string()).unwrap_or_default()),
        text(&|s| cell(&s.channel)),
        text(&|s| s.table_number.as_deref().map(cell).unwrap_or_default()),
        text(&|s| {
            s.items
                .iter()
                .map(|i| format!("{} x {}", i.product_id.0, i.quantity))
                .collect::<Vec<_>>()
                .join("; ")
        }),
        text(&|s| s.totals.total.to_string()),
        text(&|s| s.totals.tax.to_string()),
        text(&|s| s.totals.service_charge.to_string()),
        text(&|s| s.totals.grand_total.to_string()),
        text(&|s| (s.payment_status as u8).to_string()),
        order.version.0.to_string(),
        order.created.get().0.to_string(),
        order.updated.get().0.to_string(),
        text(&|s| cell(&s.notes)),
    ]
}
