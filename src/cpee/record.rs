//! A callback the broker owes CPEE, as the journal and the cluster's
//! stream keep it: what was promised (`CPEE-CALLBACK: true`) must survive
//! a restart and move to a new leader. The live side of a callback
//! (delivery attempts, the answer in flight, stop/resume) is not kept:
//! whoever delivers after a restart starts it afresh from this.
//!
//! A callback's life in records: `Record::Callback` when it is registered
//! and when a waiting orderbot is given an order (written before the order
//! is claimed for it), `Record::CallbackEnded` once it is answered, given
//! up or cancelled. So a record names at most one order, and an order it
//! names was claimed for it only if the order is still new and has its
//! orderbot (see `Cpee::take_over`).

use serde::{Deserialize, Serialize};

use crate::http::access::{Viewer, partner_key};
use crate::model::{Millis, OrderId, Stage};

/// What an order must reach for a state wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    Status(String),
    Stage(Stage),
}

/// What the caller that registered a callback may see of its order:
/// [`Viewer`] with a delivery partner's id spelled out (a `Viewer` holds a
/// key that is random per process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Audience {
    Everything,
    Customer(u64),
    Partner(String),
    Board,
}

impl Audience {
    /// `partner` is the caller's partner id, which `Viewer::Partner` was
    /// made from; without it a partner's view falls back to the board's
    /// (never more than they may see).
    pub fn of(viewer: Viewer, partner: Option<&str>) -> Audience {
        match viewer {
            Viewer::Everything => Audience::Everything,
            Viewer::Customer(id) => Audience::Customer(id),
            Viewer::Partner(key) => match partner.filter(|p| partner_key(p) == key) {
                Some(p) => Audience::Partner(p.to_string()),
                None => Audience::Board,
            },
            Viewer::Board => Audience::Board,
        }
    }

    pub fn viewer(&self) -> Viewer {
        match self {
            Audience::Everything => Viewer::Everything,
            Audience::Customer(id) => Viewer::Customer(*id),
            Audience::Partner(p) => Viewer::Partner(partner_key(p)),
            Audience::Board => Viewer::Board,
        }
    }
}

/// What a callback is owed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Owes {
    /// `next-order`: work for `orderbot`; `order` is the order being handed
    /// to it, if one is.
    Work {
        orderbot: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<OrderId>,
    },
    /// `wait`: the order reaching `target` (each state before it too, with
    /// `updates`).
    State {
        order: OrderId,
        target: Target,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        updates: bool,
    },
}

/// One callback as a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Callback {
    pub id: u64,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub created: Millis,
    pub audience: Audience,
    pub owes: Owes,
}

impl Callback {
    /// `next-order` or `wait`, as `GET /cpee/callbacks` names it.
    pub fn kind(&self) -> &'static str {
        match self.owes {
            Owes::Work { .. } => "next-order",
            Owes::State { .. } => "wait",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_audience_survives_a_new_process_key_only_with_its_id() {
        let key = partner_key("rider-7");
        assert_eq!(
            Audience::of(Viewer::Partner(key), Some("rider-7")),
            Audience::Partner("rider-7".into())
        );
        assert_eq!(
            Audience::of(Viewer::Partner(key), Some("rider-8")),
            Audience::Board
        );
        assert_eq!(Audience::of(Viewer::Partner(key), None), Audience::Board);
        assert_eq!(
            Audience::Partner("rider-7".into()).viewer(),
            Viewer::Partner(key)
        );
    }

    #[test]
    fn records_read_back_as_written() {
        let callback = Callback {
            id: 9,
            url: "http://cpee/callbacks/1".into(),
            instance: Some("4".into()),
            instance_url: None,
            label: None,
            created: Millis(5),
            audience: Audience::Customer(3),
            owes: Owes::State {
                order: OrderId(2),
                target: Target::Stage(Stage::Completed),
                updates: true,
            },
        };
        let json = serde_json::to_string(&callback).unwrap();
        assert_eq!(serde_json::from_str::<Callback>(&json).unwrap(), callback);
    }
}
