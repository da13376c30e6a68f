//! Every kind of journal and snapshot record reads back exactly as it was
//! written, with extreme values: ids at u64::MAX, amounts at ±Money::MAX
//! (and any i64 of cents beyond),
//! quantities at MAX_UNITS, negative balances, long and unicode texts, every
//! optional field set and unset. What the broker writes it can always read.

use std::sync::Arc;

use order_broker::catalog::{
    Customer, CustomerId, Product, ProductId, Template, TemplateId, TemplateItem,
};
use order_broker::cpee::{Audience, Callback, Owes, Target};
use order_broker::journal::record::{Frames, Record, Retired, StoredOrder};
use order_broker::model::{Millis, OrderId, Seq, Stage};
use order_broker::money::{MAX_UNITS, Money};
use order_broker::shop::{
    Delivery, Feedback, HistoryEntry, Item, Ledger, Location, PaymentStatus, Return, ReturnItem,
    ReturnStatus, ShopOrder, Totals, Units,
};
use proptest::prelude::*;

/// Writes `records` as frames and reads them back as recovery does.
fn round_trip(records: &[Record]) -> Vec<Record> {
    let mut bytes = Vec::new();
    for record in records {
        record.write_frame(&mut bytes);
    }
    let mut frames = Frames::new(&bytes[..], 0, bytes.len() as u64);
    let mut out = Vec::new();
    while let Some(payload) = frames.next_payload().unwrap().expect("a whole frame") {
        let record = Record::decode(payload).unwrap_or_else(|e| {
            let text = String::from_utf8_lossy(payload);
            let start: String = text.chars().take(300).collect();
            panic!("{e}: {start}…");
        });
        out.push(record);
    }
    out
}

fn big(n: u64) -> BoxedStrategy<u64> {
    prop_oneof![
        2 => Just(0u64),
        3 => Just(n),
        2 => Just(n - 1),
        3 => 0..=n,
        2 => 0u64..1000,
    ]
    .boxed()
}

fn ids() -> BoxedStrategy<u64> {
    big(u64::MAX)
}

fn quantities() -> BoxedStrategy<u64> {
    big(MAX_UNITS)
}

/// Amounts the broker holds (within ±Money::MAX), and any `i64` of cents
/// beyond: the codec is exact for all of them (past 2^53 cents an `f64`
/// was not: 90071992547409.93 read back as .92).
fn amounts() -> BoxedStrategy<Money> {
    prop_oneof![
        Just(Money::MAX),
        Just(Money::MIN),
        Just(Money::ZERO),
        Just(Money(1)),
        Just(Money(-1)),
        Just(Money(9_007_199_254_740_993)),
        Just(Money(i64::MAX)),
        Just(Money(i64::MIN)),
        (Money::MIN.0..=Money::MAX.0).prop_map(Money),
        any::<i64>().prop_map(Money),
        (-100_000i64..100_000).prop_map(Money),
    ]
    .boxed()
}

fn millis() -> BoxedStrategy<Millis> {
    prop_oneof![Just(0), Just(u64::MAX), 0u64..1 << 48, any::<u64>()]
        .prop_map(Millis)
        .boxed()
}

/// Short and long texts: ASCII, JSON's special characters, any Unicode
/// scalar (control characters included), and 64 KiB runs.
fn texts() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 ]{0,12}",
        3 => "[\\\\\"/\\t\\n\\r\u{0}-\u{1f}é€\u{1F37A}\u{FFFD}\u{10FFFF}]{0,24}",
        3 => prop::collection::vec(any::<char>(), 0..64).prop_map(String::from_iter),
        1 => (any::<char>(), 0usize..65_536).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    proptest::option::of(s).boxed()
}

fn items() -> BoxedStrategy<Vec<Item>> {
    prop::collection::vec(
        (ids(), texts(), quantities(), amounts()).prop_map(|(id, name, quantity, unit_price)| {
            Item {
                product_id: ProductId(id),
                name,
                quantity,
                unit_price,
            }
        }),
        0..4,
    )
    .boxed()
}

fn totals() -> BoxedStrategy<Totals> {
    (amounts(), amounts(), amounts(), amounts(), amounts())
        .prop_map(
            |(total, tax, service_charge, delivery_fee, grand_total)| Totals {
                total,
                tax,
                service_charge,
                delivery_fee,
                grand_total,
            },
        )
        .boxed()
}

fn history() -> BoxedStrategy<Vec<HistoryEntry>> {
    prop::collection::vec(
        (texts(), millis(), maybe(texts())).prop_map(|(status, at, reason)| HistoryEntry {
            status,
            at,
            reason,
        }),
        0..4,
    )
    .boxed()
}

fn delivery() -> BoxedStrategy<Delivery> {
    (maybe(any::<u32>()), maybe(texts()), amounts())
        .prop_map(|(distance_m, zone, surcharge)| Delivery {
            distance_m,
            zone,
            surcharge,
        })
        .boxed()
}

fn return_request() -> BoxedStrategy<Return> {
    (
        prop::sample::select(ReturnStatus::ALL.to_vec()),
        prop::collection::vec(
            (ids(), quantities()).prop_map(|(id, quantity)| ReturnItem {
                product_id: ProductId(id),
                quantity,
            }),
            0..4,
        ),
        texts(),
        amounts(),
        millis(),
    )
        .prop_map(|(status, items, reason, amount, requested_at)| Return {
            status,
            items,
            reason,
            amount,
            requested_at,
        })
        .boxed()
}

fn feedback() -> BoxedStrategy<Feedback> {
    (any::<u8>(), texts(), millis())
        .prop_map(|(rating, comment, at)| Feedback {
            rating,
            comment,
            at,
        })
        .boxed()
}

fn location() -> BoxedStrategy<Location> {
    let lat = prop_oneof![
        Just(-90_000_000),
        Just(90_000_000),
        -90_000_000i32..=90_000_000
    ];
    let lng = prop_oneof![
        Just(-180_000_000),
        Just(180_000_000),
        -180_000_000i32..=180_000_000
    ];
    (lat, lng, millis())
        .prop_map(|(lat, lng, at)| {
            Location::new(f64::from(lat) / 1e6, f64::from(lng) / 1e6, at).unwrap()
        })
        .boxed()
}

fn units() -> BoxedStrategy<Units> {
    prop::collection::btree_map(ids().prop_map(ProductId), quantities(), 0..4).boxed()
}

fn ledger() -> BoxedStrategy<Ledger> {
    (
        (amounts(), amounts(), amounts()),
        (units(), units()),
        (maybe(millis()), maybe(millis()), maybe(millis())),
    )
        .prop_map(
            |(
                (charged, given_back, refunded),
                (items_taken, items_returned),
                (charged_at, given_back_at, refunded_at),
            )| Ledger {
                charged,
                given_back,
                refunded,
                items_taken,
                items_returned,
                charged_at,
                given_back_at,
                refunded_at,
            },
        )
        .boxed()
}

fn shop_order() -> BoxedStrategy<ShopOrder> {
    let who = (
        texts(),
        maybe(ids().prop_map(CustomerId)),
        items(),
        texts(),
        maybe(texts()),
        texts(),
        prop::sample::select(vec![PaymentStatus::Unpaid, PaymentStatus::Paid]),
        maybe(texts()),
    );
    let what = (
        totals(),
        maybe(millis()),
        history(),
        maybe(millis()),
        maybe(delivery()),
        maybe(return_request()),
        maybe(feedback()),
        maybe(location()),
        prop::collection::vec((texts(), texts()), 0..4),
    );
    (who, what, ledger())
        .prop_map(
            |(
                (number, customer_id, items, notes, table_number, channel, payment_status, method),
                (
                    totals,
                    processed,
                    history,
                    scheduled_for,
                    delivery,
                    return_request,
                    feedback,
                    delivery_location,
                    details,
                ),
                ledger,
            )| ShopOrder {
                number,
                customer_id,
                items,
                notes,
                table_number,
                channel,
                payment_status,
                payment_method: method,
                totals,
                processed,
                history,
                scheduled_for,
                delivery,
                return_request,
                feedback,
                delivery_location,
                ledger,
                details,
            },
        )
        .boxed()
}

fn stored_order() -> BoxedStrategy<StoredOrder> {
    (
        texts(),
        maybe(texts()),
        any::<u32>(),
        (millis(), millis(), millis()),
        maybe(shop_order().prop_map(Arc::new)),
    )
        .prop_map(
            |(status, orderbot_id, version, (created, updated, stage_since), shop)| StoredOrder {
                status,
                orderbot_id,
                version,
                created,
                updated,
                stage_since,
                shop,
            },
        )
        .boxed()
}

fn seqs() -> BoxedStrategy<Seq> {
    ids().prop_map(Seq).boxed()
}

/// Every variant of [`Record`]; the match in `every_kind_is_generated`
/// fails to compile when a variant is added and not generated here.
fn records() -> BoxedStrategy<Record> {
    prop_oneof![
        8 => leaf_records(),
        // An atomic change: several records in one frame.
        1 => prop::collection::vec(leaf_records(), 1..4)
            .prop_map(|records| Record::Group { records }),
    ]
    .boxed()
}

/// Every kind but a group.
fn leaf_records() -> BoxedStrategy<Record> {
    prop_oneof![
        3 => (seqs(), ids(), stored_order()).prop_map(|(seq, id, order)| Record::Order {
            seq,
            id: OrderId(id),
            order,
        }),
        2 => (seqs(), ids(), maybe(stored_order())).prop_map(|(seq, id, evicted)| {
            Record::OrderRemoved {
                seq,
                id: OrderId(id),
                evicted,
            }
        }),
        1 => (seqs(), ids(), texts(), amounts(), quantities(), any::<u32>()).prop_map(
            |(seq, id, name, price, stock, version)| Record::Product {
                seq,
                product: Arc::new(Product {
                    id: ProductId(id),
                    name,
                    price,
                    stock,
                    version,
                }),
            }
        ),
        1 => (seqs(), ids()).prop_map(|(seq, id)| Record::ProductRemoved {
            seq,
            id: ProductId(id),
        }),
        1 => (seqs(), ids(), texts(), maybe(texts()), amounts(), any::<u32>()).prop_map(
            |(seq, id, name, phone, balance, version)| Record::Customer {
                seq,
                customer: Arc::new(Customer {
                    id: CustomerId(id),
                    name,
                    phone,
                    balance,
                    version,
                }),
            }
        ),
        1 => (seqs(), ids()).prop_map(|(seq, id)| Record::CustomerRemoved {
            seq,
            id: CustomerId(id),
        }),
        1 => (
            seqs(),
            (ids(), ids()),
            texts(),
            prop::collection::vec(
                (ids(), quantities()).prop_map(|(id, quantity)| TemplateItem {
                    product_id: ProductId(id),
                    quantity,
                }),
                0..4
            ),
            texts(),
            any::<u32>()
        )
            .prop_map(|(seq, (id, customer), name, items, notes, version)| {
                Record::Template {
                    seq,
                    template: Arc::new(Template {
                        id: TemplateId(id),
                        customer_id: CustomerId(customer),
                        name,
                        items,
                        notes,
                        version,
                    }),
                }
            }),
        1 => (seqs(), ids()).prop_map(|(seq, id)| Record::TemplateRemoved {
            seq,
            id: TemplateId(id),
        }),
        1 => (seqs(), ids(), any::<u8>(), texts(), any::<bool>()).prop_map(|(seq, id, kind, text, set)| {
            let some = |t: &String| set.then(|| t.clone());
            let audience = match kind % 4 {
                0 => Audience::Everything,
                1 => Audience::Customer(id),
                2 => Audience::Partner(text.clone()),
                _ => Audience::Board,
            };
            let owes = match kind % 3 {
                0 => Owes::Work {
                    orderbot: text.clone(),
                    order: set.then_some(OrderId(id)),
                },
                1 => Owes::State {
                    order: OrderId(id),
                    target: Target::Status(text.clone()),
                    updates: set,
                },
                _ => Owes::State {
                    order: OrderId(id),
                    target: Target::Stage(Stage::ALL[usize::from(kind) % Stage::ALL.len()]),
                    updates: !set,
                },
            };
            Record::Callback {
                seq,
                callback: Arc::new(Callback {
                    id,
                    url: text.clone(),
                    instance: some(&text),
                    instance_url: some(&text),
                    label: some(&text),
                    created: Millis(id),
                    audience,
                    owes,
                }),
            }
        }),
        1 => (seqs(), ids()).prop_map(|(seq, id)| Record::CallbackEnded { seq, id }),
        1 => (seqs(), ids(), ids(), ids(), ids()).prop_map(|(seq, order, product, customer, template)| {
            Record::Snapshot {
                seq,
                next_order_id: order,
                next_product_id: product,
                next_customer_id: customer,
                next_template_id: template,
                next_callback_id: order ^ template,
                retired: Retired {
                    products: vec![order, product],
                    customers: vec![customer],
                    templates: Vec::new(),
                },
            }
        }),
        1 => ids().prop_map(|records| Record::End { records }),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_record_reads_back_as_written(records in prop::collection::vec(records(), 1..6)) {
        prop_assert_eq!(round_trip(&records), records);
    }
}

/// One of each kind, each shop field at its extreme: set to the largest
/// values, and unset; as one journal.
#[test]
fn every_kind_with_every_field_set_and_unset() {
    let long = "ü€🍺\"\\\n".repeat(10_000);
    let at = Millis(u64::MAX);
    let full = ShopOrder {
        number: long.clone(),
        customer_id: Some(CustomerId(u64::MAX)),
        items: vec![
            Item {
                product_id: ProductId(u64::MAX),
                name: long.clone(),
                quantity: MAX_UNITS,
                unit_price: Money::MAX,
            },
            Item {
                product_id: ProductId(0),
                name: String::new(),
                quantity: 0,
                unit_price: Money(i64::MIN),
            },
        ],
        notes: long.clone(),
        table_number: Some(long.clone()),
        channel: long.clone(),
        payment_status: PaymentStatus::Paid,
        payment_method: Some(long.clone()),
        totals: Totals {
            total: Money::MAX,
            tax: Money::MAX,
            service_charge: Money::MIN,
            delivery_fee: Money(i64::MAX),
            grand_total: Money::MAX,
        },
        processed: Some(at),
        history: vec![
            HistoryEntry {
                status: long.clone(),
                at,
                reason: Some(long.clone()),
            },
            HistoryEntry {
                status: String::new(),
                at: Millis(0),
                reason: None,
            },
        ],
        scheduled_for: Some(at),
        delivery: Some(Delivery {
            distance_m: Some(u32::MAX),
            zone: Some(long.clone()),
            surcharge: Money::MAX,
        }),
        return_request: Some(Return {
            status: ReturnStatus::Refunded,
            items: vec![ReturnItem {
                product_id: ProductId(u64::MAX),
                quantity: MAX_UNITS,
            }],
            reason: long.clone(),
            amount: Money::MAX,
            requested_at: at,
        }),
        feedback: Some(Feedback {
            rating: u8::MAX,
            comment: long.clone(),
            at,
        }),
        delivery_location: Location::new(-90.0, 180.0, at),
        ledger: Ledger {
            charged: Money::MAX,
            given_back: Money::MIN,
            refunded: Money(i64::MAX),
            items_taken: [(ProductId(u64::MAX), MAX_UNITS), (ProductId(0), 0)].into(),
            items_returned: [(ProductId(u64::MAX), MAX_UNITS)].into(),
            charged_at: Some(at),
            given_back_at: Some(Millis(0)),
            refunded_at: Some(at),
        },
        details: vec![(long.clone(), long.clone()), (String::new(), String::new())],
    };
    let empty = ShopOrder {
        number: String::new(),
        customer_id: None,
        items: Vec::new(),
        notes: String::new(),
        table_number: None,
        channel: String::new(),
        payment_status: PaymentStatus::Unpaid,
        payment_method: None,
        totals: Totals::default(),
        processed: None,
        history: Vec::new(),
        scheduled_for: None,
        delivery: Some(Delivery {
            distance_m: None,
            zone: None,
            surcharge: Money::MIN,
        }),
        return_request: None,
        feedback: None,
        delivery_location: None,
        ledger: Ledger::default(),
        details: Vec::new(),
    };
    let stored = |shop: Option<ShopOrder>| StoredOrder {
        status: long.clone(),
        orderbot_id: shop.as_ref().map(|_| long.clone()),
        version: u32::MAX,
        created: at,
        updated: at,
        stage_since: at,
        shop: shop.map(Arc::new),
    };
    let max = Seq(u64::MAX);
    let records = vec![
        Record::Snapshot {
            seq: max,
            next_order_id: u64::MAX,
            next_product_id: u64::MAX,
            next_customer_id: u64::MAX,
            next_template_id: u64::MAX,
            next_callback_id: u64::MAX,
            retired: Retired {
                products: vec![0, u64::MAX],
                customers: vec![u64::MAX],
                templates: vec![1],
            },
        },
        Record::Order {
            seq: max,
            id: OrderId(u64::MAX),
            order: stored(Some(full)),
        },
        Record::Order {
            seq: Seq(0),
            id: OrderId(0),
            order: stored(Some(empty)),
        },
        Record::Order {
            seq: Seq(1),
            id: OrderId(1),
            order: stored(None),
        },
        Record::OrderRemoved {
            seq: max,
            id: OrderId(u64::MAX),
            evicted: Some(stored(None)),
        },
        Record::OrderRemoved {
            seq: max,
            id: OrderId(u64::MAX),
            evicted: None,
        },
        Record::Product {
            seq: max,
            product: Arc::new(Product {
                id: ProductId(u64::MAX),
                name: long.clone(),
                price: Money::MAX,
                stock: MAX_UNITS,
                version: u32::MAX,
            }),
        },
        Record::ProductRemoved {
            seq: max,
            id: ProductId(u64::MAX),
        },
        Record::Customer {
            seq: max,
            customer: Arc::new(Customer {
                id: CustomerId(u64::MAX),
                name: long.clone(),
                phone: Some(long.clone()),
                balance: Money::MIN,
                version: u32::MAX,
            }),
        },
        Record::Customer {
            seq: max,
            customer: Arc::new(Customer {
                id: CustomerId(0),
                name: String::new(),
                phone: None,
                balance: Money(-1),
                version: 0,
            }),
        },
        Record::CustomerRemoved {
            seq: max,
            id: CustomerId(u64::MAX),
        },
        Record::Template {
            seq: max,
            template: Arc::new(Template {
                id: TemplateId(u64::MAX),
                customer_id: CustomerId(u64::MAX),
                name: long.clone(),
                items: vec![TemplateItem {
                    product_id: ProductId(u64::MAX),
                    quantity: MAX_UNITS,
                }],
                notes: long.clone(),
                version: u32::MAX,
            }),
        },
        Record::TemplateRemoved {
            seq: max,
            id: TemplateId(u64::MAX),
        },
        Record::Callback {
            seq: max,
            callback: Arc::new(Callback {
                id: u64::MAX,
                url: long.clone(),
                instance: Some(long.clone()),
                instance_url: Some(long.clone()),
                label: Some(long.clone()),
                created: Millis(u64::MAX),
                audience: Audience::Partner(long.clone()),
                owes: Owes::Work {
                    orderbot: long.clone(),
                    order: Some(OrderId(u64::MAX)),
                },
            }),
        },
        Record::CallbackEnded {
            seq: max,
            id: u64::MAX,
        },
        Record::End { records: u64::MAX },
    ];
    let group = Record::Group {
        records: records[..3].to_vec(),
    };
    let mut records = records;
    records.push(group);
    for record in &records {
        every_kind_is_generated(record);
    }
    assert_eq!(round_trip(&records), records);
}

/// Names every variant, so a new kind of record is noticed here.
fn every_kind_is_generated(record: &Record) {
    match record {
        Record::Order { .. }
        | Record::OrderRemoved { .. }
        | Record::Product { .. }
        | Record::ProductRemoved { .. }
        | Record::Customer { .. }
        | Record::CustomerRemoved { .. }
        | Record::Template { .. }
        | Record::TemplateRemoved { .. }
        | Record::Callback { .. }
        | Record::CallbackEnded { .. }
        | Record::Snapshot { .. }
        | Record::End { .. } => {}
        Record::Group { records } => records.iter().for_each(every_kind_is_generated),
    }
}
