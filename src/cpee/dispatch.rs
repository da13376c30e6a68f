//! Work dispatch: orders taken in by intake wait in a FIFO queue, orderbots
//! asking for work in another, oldest first; both under one lock, so each
//! order goes to exactly one orderbot and no order waits while one does.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::warn;

use super::deliver::Owed;
use super::{Cpee, CpeeCall};
use crate::http::access::Viewer;
use crate::model::OrderId;

pub(super) enum Waiter {
    Callback {
        id: u64,
        orderbot: String,
        viewer: Viewer,
    },
    Poll {
        orderbot: String,
        tx: oneshot::Sender<OrderId>,
    },
}

#[derive(Default)]
pub(super) struct Dispatch {
    /// Orders waiting for an orderbot, oldest first.
    pub(super) orders: VecDeque<OrderId>,
    /// Orderbots waiting for an order, oldest first.
    pub(super) waiters: VecDeque<Waiter>,
}

impl Cpee {
    /// Queues an order taken in by intake, handing it out if an orderbot waits.
    pub fn enqueue(self: &Arc<Self>, order: OrderId) {
        self.dispatch.lock().orders.push_back(order);
        self.dispatch_ready();
    }

    /// After recovery: queues again every order taken in by intake that no
    /// orderbot got, oldest first.
    pub fn requeue_intake(self: &Arc<Self>) {
        let waiting = self.broker.undispatched_intake();
        if waiting.is_empty() {
            return;
        }
        self.dispatch.lock().orders.extend(waiting);
        self.dispatch_ready();
    }

    /// Asks for work: the oldest waiting order now, or None.
    pub fn take_now(&self, orderbot: &str) -> Option<OrderId> {
        let order = self.dispatch.lock().orders.pop_front()?;
        self.assign(order, orderbot);
        Some(order)
    }

    /// Waits for work with a callback: the order is PUT when one comes.
    pub fn wait_for_work(self: &Arc<Self>, call: &CpeeCall, orderbot: &str, viewer: Viewer) -> u64 {
        let id = self.register("next-order", call, None, Some(orderbot));
        self.dispatch.lock().waiters.push_back(Waiter::Callback {
            id,
            orderbot: orderbot.to_string(),
            viewer,
        });
        self.dispatch_ready();
        id
    }

    /// Waits for work by long poll; the receiver gets the order.
    pub fn poll_for_work(self: &Arc<Self>, orderbot: &str) -> oneshot::Receiver<OrderId> {
        let (tx, rx) = oneshot::channel();
        self.dispatch.lock().waiters.push_back(Waiter::Poll {
            orderbot: orderbot.to_string(),
            tx,
        });
        self.dispatch_ready();
        rx
    }

    /// Pairs waiting orders with waiting orderbots, oldest with oldest.
    pub(super) fn dispatch_ready(self: &Arc<Self>) {
        loop {
            let (order, waiter) = {
                let mut d = self.dispatch.lock();
                if d.orders.is_empty() || d.waiters.is_empty() {
                    return;
                }
                let order = d.orders.pop_front().expect("checked");
                let waiter = d.waiters.pop_front().expect("checked");
                (order, waiter)
            };
            match waiter {
                Waiter::Poll { orderbot, tx } => {
                    self.assign(order, &orderbot);
                    if tx.send(order).is_err() {
                        // The poller left: the order goes back to the head.
                        self.dispatch.lock().orders.push_front(order);
                    }
                }
                Waiter::Callback {
                    id,
                    orderbot,
                    viewer,
                } => {
                    self.assign(order, &orderbot);
                    if let Some(mut p) = self.pending.get_mut(&id) {
                        p.order_id = Some(order);
                    }
                    let body = self.order_json(order, viewer);
                    self.owe(
                        id,
                        Owed {
                            body,
                            update: None,
                            order: Some(order),
                        },
                    );
                }
            }
        }
    }

    fn assign(&self, order: OrderId, orderbot: &str) {
        if let Err(e) = self.broker.set_orderbot(order, orderbot) {
            warn!(%order, error = %e, "could not record the orderbot of a dispatched order");
        }
    }

    /// The order as `viewer` may see it (see [`crate::http::access::viewer`]).
    pub fn order_json(&self, id: OrderId, viewer: Viewer) -> Bytes {
        let _pin = self.broker.pin();
        match self.broker.get(id) {
            Some(order) => crate::http::order_json(&self.broker, id, &order, viewer),
            None => Bytes::from_static(b"null"),
        }
    }
}
