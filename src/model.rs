//! Domain types shared by every module: ids, sequence numbers, stages, and the
//! compact in-memory order record.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::shop::ShopOrder;
use crate::symbols::Sym;

/// The highest order id a client may choose (`update_order`): the largest
/// integer a JavaScript number holds exactly (the board reads ids as
/// numbers). Ids the broker assigns are kept above every chosen one, so an
/// id near `u64::MAX` would leave none to assign; this bound keeps 2^64 −
/// 2^53 of them.
pub const MAX_CHOSEN_ORDER_ID: u64 = (1 << 53) - 1;

/// An order's key in the broker's maps.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct OrderId(pub u64);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Position of a change in the broker's one global, gapless sequence.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

/// Per-record change counter: 1 at creation, +1 per change. 32 bits keep an
/// order at 40 bytes; a record that would pass `u32::MAX` changes is refused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct Version(pub u32);

impl Version {
    pub fn next(self) -> Option<Version> {
        self.0.checked_add(1).map(Version)
    }
}

/// Milliseconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Millis(since.as_millis() as u64)
    }
}

/// A time as 48-bit milliseconds since the Unix epoch (good until the year
/// 10889): three of them fit where two `u64`s would, keeping `Order` at 40
/// bytes.
// No `Ord`: the bytes are little-endian; compare `get()` values instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stamp([u8; 6]);

impl Stamp {
    pub fn get(self) -> Millis {
        let mut bytes = [0u8; 8];
        bytes[..6].copy_from_slice(&self.0);
        Millis(u64::from_le_bytes(bytes))
    }
}

impl From<Millis> for Stamp {
    fn from(m: Millis) -> Stamp {
        let clamped = m.0.min((1 << 48) - 1);
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(&clamped.to_le_bytes()[..6]);
        Stamp(bytes)
    }
}

/// An order's place in every list (the seed's views, `/orders`, a
/// customer's orders, exports): when it first arrived, then its id. The
/// seed service kept its orders in arrival order and the robot bar's
/// website shows them so; ids break ties within one millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Arrival {
    pub created: Millis,
    pub id: OrderId,
}

impl Arrival {
    pub fn of(id: OrderId, order: &Order) -> Arrival {
        Arrival {
            created: order.created.get(),
            id,
        }
    }
}

/// Where an order stands, derived from its status word (never set directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    New,
    InProgress,
    Completed,
    Cancelled,
    /// Waiting for its time (`POST /orders/scheduled`); on no board view.
    Scheduled,
}

impl Stage {
    pub const COUNT: usize = 5;

    pub const ALL: [Stage; Stage::COUNT] = [
        Stage::New,
        Stage::InProgress,
        Stage::Completed,
        Stage::Cancelled,
        Stage::Scheduled,
    ];

    /// Dense index, for per-stage arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Completed or cancelled: the order will not move on.
    pub const fn is_finished(self) -> bool {
        matches!(self, Stage::Completed | Stage::Cancelled)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::New => "new",
            Stage::InProgress => "in_progress",
            Stage::Completed => "completed",
            Stage::Cancelled => "cancelled",
            Stage::Scheduled => "scheduled",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One order as the map holds it. Kept small on purpose (40 bytes): text
/// fields are interned symbols and shop details sit behind one pointer, so a
/// million orders of the robot bar's shape fit in well under 150 bytes of RSS
/// each. Resolve it with [`crate::Broker::resolve`] to get the texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub status: Sym,
    pub orderbot_id: Option<Sym>,
    /// Cached from `status` through the configured stage words.
    pub stage: Stage,
    pub version: Version,
    pub created: Stamp,
    pub updated: Stamp,
    /// When the order entered its current stage.
    pub stage_since: Stamp,
    /// Items, customer, money and history of orders made through the shop
    /// APIs; None for the robot bar's status-only orders.
    pub shop: Option<Arc<ShopOrder>>,
}

/// An order with its texts resolved: what clients and tests see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub id: OrderId,
    pub status: String,
    pub orderbot_id: Option<String>,
    pub stage: Stage,
    pub version: Version,
    pub created: Millis,
    pub updated: Millis,
    pub stage_since: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        for m in [0, 1, 1_795_383_805_507, (1 << 48) - 1] {
            assert_eq!(Stamp::from(Millis(m)).get(), Millis(m));
        }
        assert_eq!(Stamp::from(Millis(u64::MAX)).get(), Millis((1 << 48) - 1));
    }

    #[test]
    fn order_stays_compact() {
        // The memory target (<= 150 B RSS per order) depends on this.
        assert!(std::mem::size_of::<Order>() <= 40);
    }
}
