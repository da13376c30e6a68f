//! What the journal and snapshots hold, and how it sits in a file.
//!
//! A file is an 8-byte magic followed by frames. A frame is the payload's
//! length (u32, little-endian), its CRC-32 (u32, little-endian), then the
//! payload: one [`Record`] as JSON. JSON keeps the files readable with
//! ordinary tools; the frame makes a torn or corrupted write detectable.

use std::io::{self, Read};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::{Customer, CustomerId, Product, ProductId, Template, TemplateId};
use crate::feed::{Change, Event};
use crate::model::{Millis, Order, OrderId, Seq};
use crate::shop::ShopOrder;
use crate::symbols::SymbolsReader;

/// First bytes of a journal segment.
pub const JOURNAL_MAGIC: &[u8; 8] = b"OBJRNL01";
/// First bytes of an archive of evicted orders.
pub const ARCHIVE_MAGIC: &[u8; 8] = b"OBARCH01";
/// First bytes of a snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"OBSNAP01";
/// Bytes before a frame's payload: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// Largest payload a frame may declare. Far above any real record (a request
/// body is at most `limits.max_body_bytes`); a larger length is corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// One journal or snapshot record. The full state of a record after a
/// change, so replaying a record twice, or over a newer snapshot, ends in
/// the same state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    Order {
        seq: Seq,
        id: OrderId,
        order: StoredOrder,
    },
    OrderRemoved {
        seq: Seq,
        id: OrderId,
        /// Its final state, when it was evicted (it is in the archive too).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        evicted: Option<StoredOrder>,
    },
    Product {
        seq: Seq,
        product: Arc<Product>,
    },
    ProductRemoved {
        seq: Seq,
        id: ProductId,
    },
    Customer {
        seq: Seq,
        customer: Arc<Customer>,
    },
    CustomerRemoved {
        seq: Seq,
        id: CustomerId,
    },
    Template {
        seq: Seq,
        template: Arc<Template>,
    },
    TemplateRemoved {
        seq: Seq,
        id: TemplateId,
    },
    /// A callback owed to CPEE (`crate::cpee::record`).
    Callback {
        seq: Seq,
        callback: Arc<crate::cpee::Callback>,
    },
    CallbackEnded {
        seq: Seq,
        id: u64,
    },
    /// A snapshot's first record: every change up to `seq` is in it.
    Snapshot {
        seq: Seq,
        /// Above every id the broker ever used or assigned.
        next_order_id: u64,
        next_product_id: u64,
        next_customer_id: u64,
        #[serde(default)]
        next_template_id: u64,
        /// Above every callback id given (snapshots before callbacks were
        /// kept have none).
        #[serde(default)]
        next_callback_id: u64,
        /// Ids of deleted products, customers and templates (never reused).
        #[serde(default, skip_serializing_if = "Retired::is_empty")]
        retired: Retired,
    },
    /// A snapshot's last record: how many records came between.
    End {
        records: u64,
    },
    /// Changes committed together (under one sequencer lock, consecutive
    /// seqs): one frame, so recovery applies all of them or none. Only in
    /// the journal; never nested.
    Group {
        records: Vec<Record>,
    },
}

/// Ids of deleted records, per table, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retired {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub customers: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<u64>,
}

impl Retired {
    pub fn is_empty(&self) -> bool {
        self.products.is_empty() && self.customers.is_empty() && self.templates.is_empty()
    }
}

/// An order as stored: its texts spelled out (symbols are per process).
/// The stage is not stored: it follows from the status and the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredOrder {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orderbot_id: Option<String>,
    pub version: u32,
    pub created: Millis,
    pub updated: Millis,
    pub stage_since: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop: Option<Arc<ShopOrder>>,
}

impl StoredOrder {
    pub fn of(order: &Order, symbols: &SymbolsReader<'_>) -> StoredOrder {
        StoredOrder {
            status: symbols.text(order.status).to_string(),
            orderbot_id: order.orderbot_id.map(|b| symbols.text(b).to_string()),
            version: order.version.0,
            created: order.created.get(),
            updated: order.updated.get(),
            stage_since: order.stage_since.get(),
            shop: order.shop.clone(),
        }
    }
}

impl Record {
    /// The record of one change event.
    pub fn of(event: &Event, symbols: &SymbolsReader<'_>) -> Record {
        let seq = event.seq;
        match &event.change {
            Change::Order { id, order, .. } => Record::Order {
                seq,
                id: *id,
                order: StoredOrder::of(order, symbols),
            },
            Change::OrderRemoved { id, evicted, .. } => Record::OrderRemoved {
                seq,
                id: *id,
                evicted: evicted.as_ref().map(|o| StoredOrder::of(o, symbols)),
            },
            Change::Product(product) => Record::Product {
                seq,
                product: product.clone(),
            },
            Change::ProductRemoved(id) => Record::ProductRemoved { seq, id: *id },
            Change::Customer(customer) => Record::Customer {
                seq,
                customer: customer.clone(),
            },
            Change::CustomerRemoved(id) => Record::CustomerRemoved { seq, id: *id },
            Change::Template(template) => Record::Template {
                seq,
                template: template.clone(),
            },
            Change::TemplateRemoved(id) => Record::TemplateRemoved { seq, id: *id },
            Change::Callback(callback) => Record::Callback {
                seq,
                callback: callback.clone(),
            },
            Change::CallbackEnded(id) => Record::CallbackEnded { seq, id: *id },
        }
    }

    /// The change's seq; None for a snapshot's end marker.
    pub fn seq(&self) -> Option<Seq> {
        match self {
            Record::Order { seq, .. }
            | Record::OrderRemoved { seq, .. }
            | Record::Product { seq, .. }
            | Record::ProductRemoved { seq, .. }
            | Record::Customer { seq, .. }
            | Record::CustomerRemoved { seq, .. }
            | Record::Template { seq, .. }
            | Record::TemplateRemoved { seq, .. }
            | Record::Callback { seq, .. }
            | Record::CallbackEnded { seq, .. }
            | Record::Snapshot { seq, .. } => Some(*seq),
            Record::End { .. } => None,
            Record::Group { records } => records.last().and_then(Record::seq),
        }
    }

    /// The change records this record holds: itself, or a group's members.
    pub fn changes(&self) -> &[Record] {
        match self {
            Record::Group { records } => records,
            one => std::slice::from_ref(one),
        }
    }

    /// Appends this record as one frame.
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        serde_json::to_writer(&mut *out, self).expect("records serialize to memory");
        let payload = &out[start + FRAME_HEADER..];
        let len = u32::try_from(payload.len()).expect("a record is far below 4 GiB");
        let crc = crc32fast::hash(payload);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(payload: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The file ends inside the frame: a write that never finished.
    Truncated,
    /// The length is zero or above [`MAX_PAYLOAD`].
    BadLength(u32),
    /// The payload does not match its checksum; the frame would end at `end`.
    Checksum { end: u64 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("the file ends inside a record"),
            FrameError::BadLength(n) => write!(f, "impossible record length {n}"),
            FrameError::Checksum { .. } => f.write_str("checksum mismatch"),
        }
    }
}

/// Reads frames one by one from a file of known length.
pub struct Frames<R> {
    input: R,
    /// Offset of the next frame.
    offset: u64,
    len: u64,
    payload: Vec<u8>,
}

impl<R: Read> Frames<R> {
    /// `input` is positioned just after the magic, at `offset`; `len` is the
    /// file's length.
    pub fn new(input: R, offset: u64, len: u64) -> Self {
        Frames {
            input,
            offset,
            len,
            payload: Vec::new(),
        }
    }

    /// Where the next frame starts (after an error: where the bad one starts).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next payload; `Ok(None)` at the end of the file. After an error
    /// the reader stays at the bad frame.
    pub fn next_payload(&mut self) -> io::Result<Result<Option<&[u8]>, FrameError>> {
        let left = self.len - self.offset;
        if left == 0 {
            return Ok(Ok(None));
        }
        if left < FRAME_HEADER as u64 {
            return Ok(Err(FrameError::Truncated));
        }
        let mut header = [0u8; FRAME_HEADER];
        self.input.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len as usize > MAX_PAYLOAD {
            return Ok(Err(FrameError::BadLength(len)));
        }
        if u64::from(len) > left - FRAME_HEADER as u64 {
            return Ok(Err(FrameError::Truncated));
        }
        self.payload.resize(len as usize, 0);
        self.input.read_exact(&mut self.payload)?;
        let end = self.offset + (FRAME_HEADER + len as usize) as u64;
        if crc32fast::hash(&self.payload) != crc {
            return Ok(Err(FrameError::Checksum { end }));
        }
        self.offset = end;
        Ok(Ok(Some(&self.payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ProductId;
    use crate::money::Money;
    use crate::shop::{
        Delivery, Feedback, HistoryEntry, Item, Location, PaymentStatus, Return, ReturnItem,
        ReturnStatus, Totals,
    };

    /// Every field a shop order can carry comes back from a frame as it was.
    #[test]
    fn a_shop_order_with_every_field_round_trips() {
        let at = Millis(1_795_383_805_507);
        let shop = ShopOrder {
            number: "FR9TL74P".into(),
            customer_id: Some(CustomerId(4)),
            items: vec![Item {
                product_id: ProductId(1),
                name: "tea, \"hot\"".into(),
                quantity: 3,
                unit_price: Money(250),
            }],
            notes: "no ice".into(),
            table_number: Some("7".into()),
            channel: "web".into(),
            payment_status: PaymentStatus::Paid,
            payment_method: Some("card".into()),
            totals: Totals {
                total: Money(750),
                tax: Money(75),
                service_charge: Money(0),
                delivery_fee: Money(360),
                grand_total: Money(1185),
            },
            processed: Some(at),
            history: vec![HistoryEntry {
                status: "Cancelled".into(),
                at,
                reason: Some("late".into()),
            }],
            scheduled_for: Some(at),
            delivery: Some(Delivery {
                distance_m: Some(3200),
                zone: None,
                surcharge: Money(100),
            }),
            return_request: Some(Return {
                status: ReturnStatus::Received,
                items: vec![ReturnItem {
                    product_id: ProductId(1),
                    quantity: 1,
                }],
                reason: "cold".into(),
                amount: Money(275),
                requested_at: at,
            }),
            feedback: Some(Feedback {
                rating: 4,
                comment: "ok".into(),
                at,
            }),
            delivery_location: Location::new(48.2082, -16.3738, at),
            ledger: crate::shop::Ledger {
                charged: Money(1185),
                given_back: Money(100),
                refunded: Money(275),
                items_taken: [(ProductId(1), 3)].into(),
                items_returned: [(ProductId(1), 1)].into(),
                charged_at: Some(at),
                given_back_at: Some(at),
                refunded_at: Some(at),
            },
            details: vec![
                ("size".into(), "L".into()),
                ("drink".into(), "Mojito".into()),
            ],
        };
        let record = Record::Order {
            seq: Seq(9),
            id: OrderId(3),
            order: StoredOrder {
                status: "Delivered".into(),
                orderbot_id: Some("rider-7".into()),
                version: 12,
                created: at,
                updated: at,
                stage_since: at,
                shop: Some(Arc::new(shop)),
            },
        };
        let mut frame = Vec::new();
        record.write_frame(&mut frame);
        let mut frames = Frames::new(&frame[..], 0, frame.len() as u64);
        let payload = frames.next_payload().unwrap().unwrap().unwrap();
        assert_eq!(Record::decode(payload).unwrap(), record);
    }
}
