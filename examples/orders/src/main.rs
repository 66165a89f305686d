//! E-commerce orders on Annal: an order is a decider (placed, paid, packed, shipped,
//! delivered, or cancelled before it ships). Three read models come from the same events:
//! order status, shipping analytics per carrier, and inventory per SKU. A fourth, revenue
//! per customer, is added later and backfilled from history while the others keep running.
//!
//! `cargo run -p orders` tells the whole story; the subcommands do one thing each.

use annal_core::{EventStore, RecordedEvent, Source};
use annal_cqrs::projection::{
    Changes, ColumnType::*, Projection, Runner, Running, Sink, Table, Value,
};
use annal_cqrs::{CommandError, CommandHandler, Context, Decider, Event};
use clap::{Parser, Subcommand, ValueEnum};
use example_support::{maintain, AnyStore, Maintain, Where, READ_YOUR_WRITES};
use serde::{Deserialize, Serialize};

// ---- The domain -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
    pub price: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    Placed { customer: String, lines: Vec<Line> },
    Paid { amount: u64 },
    Packed,
    Shipped { carrier: String },
    Delivered,
    Cancelled { reason: String },
}

impl Event for OrderEvent {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stage {
    #[default]
    None,
    Placed,
    Paid,
    Packed,
    Shipped,
    Delivered,
    Cancelled,
}

#[derive(Debug, Clone, Default)]
pub struct Order {
    stage: Stage,
    total: u64,
}

#[derive(Debug, Clone)]
pub enum Command {
    Place { customer: String, lines: Vec<Line> },
    Pay,
    Pack,
    Ship { carrier: String },
    Deliver,
    Cancel { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an order that is {stage:?} cannot be {action}")]
pub struct Refused {
    stage: Stage,
    action: &'static str,
}

pub struct OrderDecider;

impl Decider for OrderDecider {
    const CATEGORY: &'static str = "order";
    type State = Order;
    type Command = Command;
    type Event = OrderEvent;
    type Error = Refused;

    fn decide(s: &Order, c: &Command) -> Result<Vec<OrderEvent>, Refused> {
        let refuse = |action| {
            Err(Refused {
                stage: s.stage,
                action,
            })
        };
        Ok(vec![match (c, s.stage) {
            (Command::Place { customer, lines }, Stage::None) => OrderEvent::Placed {
                customer: customer.clone(),
                lines: lines.clone(),
            },
            (Command::Pay, Stage::Placed) => OrderEvent::Paid { amount: s.total },
            (Command::Pack, Stage::Paid) => OrderEvent::Packed,
            (Command::Ship { carrier }, Stage::Packed) => OrderEvent::Shipped {
                carrier: carrier.clone(),
            },
            (Command::Deliver, Stage::Shipped) => OrderEvent::Delivered,
            (Command::Cancel { reason }, Stage::Placed | Stage::Paid | Stage::Packed) => {
                OrderEvent::Cancelled {
                    reason: reason.clone(),
                }
            }
            (Command::Place { .. }, _) => return refuse("placed"),
            (Command::Pay, _) => return refuse("paid"),
            (Command::Pack, _) => return refuse("packed"),
            (Command::Ship { .. }, _) => return refuse("shipped"),
            (Command::Deliver, _) => return refuse("delivered"),
            (Command::Cancel { .. }, _) => return refuse("cancelled"),
        }])
    }

    fn evolve(mut s: Order, e: &OrderEvent) -> Order {
        s.stage = match e {
            OrderEvent::Placed { lines, .. } => {
                s.total = lines.iter().map(|l| l.price * l.quantity as u64).sum();
                Stage::Placed
            }
            OrderEvent::Paid { .. } => Stage::Paid,
            OrderEvent::Packed => Stage::Packed,
            OrderEvent::Shipped { .. } => Stage::Shipped,
            OrderEvent::Delivered => Stage::Delivered,
            OrderEvent::Cancelled { .. } => Stage::Cancelled,
        };
        s
    }
}

fn order_id(r: &RecordedEvent) -> Value {
    Value::from(r.stream_id.strip_prefix("order-").unwrap_or(&r.stream_id))
}

fn orders_source() -> Source {
    Source::Category(OrderDecider::CATEGORY.into())
}

// ---- Four read models from the same events --------------------------------------------

/// `order_status`: where each order is.
pub struct OrderStatus;

impl Projection for OrderStatus {
    type Event = OrderEvent;
    fn name(&self) -> &str {
        "order_status"
    }
    fn source(&self) -> Source {
        orders_source()
    }
    fn tables(&self) -> Vec<Table> {
        vec![Table::new("order_status")
            .key("id", Text)
            .column("customer", Text)
            .column("status", Text)
            .column("total", Int)
            .column("updated_at", Int)
            .index("by_status", &["status"])]
    }
    fn apply(
        &self,
        e: &OrderEvent,
        r: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        let status = match e {
            OrderEvent::Placed { customer, lines } => {
                let total: u64 = lines.iter().map(|l| l.price * l.quantity as u64).sum();
                out.upsert(
                    "order_status",
                    [
                        order_id(r),
                        customer.into(),
                        "placed".into(),
                        total.into(),
                        r.recorded_at.into(),
                    ],
                );
                return Ok(());
            }
            OrderEvent::Paid { .. } => "paid",
            OrderEvent::Packed => "packed",
            OrderEvent::Shipped { .. } => "shipped",
            OrderEvent::Delivered => "delivered",
            OrderEvent::Cancelled { .. } => "cancelled",
        };
        out.execute(
            "UPDATE {order_status} SET status = $2, updated_at = $3 WHERE id = $1",
            [order_id(r), status.into(), r.recorded_at.into()],
        );
        Ok(())
    }
}

/// `shipping`: shipments, and per carrier how many it shipped and delivered and how long
/// deliveries took.
pub struct Shipping;

impl Projection for Shipping {
    type Event = OrderEvent;
    fn name(&self) -> &str {
        "shipping"
    }
    fn source(&self) -> Source {
        orders_source()
    }
    fn tables(&self) -> Vec<Table> {
        vec![
            Table::new("shipments")
                .key("id", Text)
                .column("carrier", Text)
                .column("shipped_at", Int)
                .column("delivered_at", Int),
            Table::new("carriers")
                .key("carrier", Text)
                .column("shipped", Int)
                .column("delivered", Int)
                .column("delivery_micros", Int),
        ]
    }
    fn apply(
        &self,
        e: &OrderEvent,
        r: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        match e {
            OrderEvent::Shipped { carrier } => {
                out.upsert(
                    "shipments",
                    [
                        order_id(r),
                        carrier.into(),
                        r.recorded_at.into(),
                        Value::Null,
                    ],
                );
                out.execute(
                    "INSERT INTO {carriers} (carrier, shipped, delivered, delivery_micros) \
                     VALUES ($1, 1, 0, 0) ON CONFLICT (carrier) \
                     DO UPDATE SET shipped = {carriers}.shipped + 1",
                    [carrier.into()],
                );
            }
            OrderEvent::Delivered => {
                out.execute(
                    "UPDATE {carriers} SET delivered = delivered + 1, delivery_micros = \
                     delivery_micros + ($2 - (SELECT shipped_at FROM {shipments} WHERE id = $1)) \
                     WHERE carrier = (SELECT carrier FROM {shipments} WHERE id = $1)",
                    [order_id(r), r.recorded_at.into()],
                );
                out.execute(
                    "UPDATE {shipments} SET delivered_at = $2 WHERE id = $1",
                    [order_id(r), r.recorded_at.into()],
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// `inventory`: per SKU, how many are reserved by open orders and how many shipped.
pub struct Inventory;

impl Projection for Inventory {
    type Event = OrderEvent;
    fn name(&self) -> &str {
        "inventory"
    }
    fn source(&self) -> Source {
        orders_source()
    }
    fn tables(&self) -> Vec<Table> {
        vec![
            Table::new("stock")
                .key("sku", Text)
                .column("reserved", Int)
                .column("shipped", Int),
            Table::new("order_lines")
                .key("order_id", Text)
                .key("sku", Text)
                .column("quantity", Int),
        ]
    }
    fn apply(
        &self,
        e: &OrderEvent,
        r: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        match e {
            OrderEvent::Placed { lines, .. } => {
                for l in lines {
                    out.upsert(
                        "order_lines",
                        [order_id(r), (&l.sku).into(), l.quantity.into()],
                    );
                    out.execute(
                        "INSERT INTO {stock} (sku, reserved, shipped) VALUES ($1, $2, 0) \
                         ON CONFLICT (sku) DO UPDATE SET reserved = {stock}.reserved + $2",
                        [(&l.sku).into(), l.quantity.into()],
                    );
                }
            }
            OrderEvent::Shipped { .. } | OrderEvent::Cancelled { .. } => {
                let shipped = if matches!(e, OrderEvent::Shipped { .. }) {
                    1
                } else {
                    0
                };
                out.execute(
                    "UPDATE {stock} SET \
                     reserved = reserved - (SELECT quantity FROM {order_lines} \
                        WHERE order_id = $1 AND sku = {stock}.sku), \
                     shipped = shipped + $2 * (SELECT quantity FROM {order_lines} \
                        WHERE order_id = $1 AND sku = {stock}.sku) \
                     WHERE sku IN (SELECT sku FROM {order_lines} WHERE order_id = $1)",
                    [order_id(r), Value::Int(shipped)],
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// `customer_revenue`, the read model added later: orders and money paid per customer.
pub struct CustomerRevenue;

impl Projection for CustomerRevenue {
    type Event = OrderEvent;
    fn name(&self) -> &str {
        "customer_revenue"
    }
    fn source(&self) -> Source {
        orders_source()
    }
    fn tables(&self) -> Vec<Table> {
        vec![
            Table::new("customers")
                .key("customer", Text)
                .column("orders", Int)
                .column("paid", Int),
            Table::new("order_customers")
                .key("order_id", Text)
                .column("customer", Text),
        ]
    }
    fn apply(
        &self,
        e: &OrderEvent,
        r: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        match e {
            OrderEvent::Placed { customer, .. } => {
                out.upsert("order_customers", [order_id(r), customer.into()]);
                out.execute(
                    "INSERT INTO {customers} (customer, orders, paid) VALUES ($1, 1, 0) \
                     ON CONFLICT (customer) DO UPDATE SET orders = {customers}.orders + 1",
                    [customer.into()],
                );
            }
            OrderEvent::Paid { amount } => out.execute(
                "UPDATE {customers} SET paid = paid + $2 WHERE customer = \
                 (SELECT customer FROM {order_customers} WHERE order_id = $1)",
                [order_id(r), (*amount).into()],
            ),
            _ => {}
        }
        Ok(())
    }
}

// ---- The command line -----------------------------------------------------------------

#[derive(Parser)]
#[command(about = "E-commerce orders on Annal: four read models from the same events")]
struct Cli {
    #[command(flatten)]
    place: Where,
    #[command(subcommand)]
    command: Option<Do>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Model {
    OrderStatus,
    Shipping,
    Inventory,
    CustomerRevenue,
}

#[derive(Subcommand)]
enum Do {
    /// The whole story, start to end (what runs without a subcommand).
    Demo,
    /// Where each read model stands.
    Status,
    /// Replay the log into a fresh copy of a read model and swap it in.
    Rebuild { model: Model },
    /// Compare a read model with a replay of the log; `--repair` fixes what differs.
    Reconcile {
        model: Model,
        #[arg(long)]
        repair: bool,
    },
    /// Events a read model could not apply.
    Failures { model: Model },
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs `$body` with `$p` bound to the projection `$model` names.
macro_rules! with_model {
    ($model:expr, $p:ident => $body:expr) => {
        match $model {
            Model::OrderStatus => {
                let $p = OrderStatus;
                $body
            }
            Model::Shipping => {
                let $p = Shipping;
                $body
            }
            Model::Inventory => {
                let $p = Inventory;
                $body
            }
            Model::CustomerRevenue => {
                let $p = CustomerRevenue;
                $body
            }
        }
    };
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let place = cli.place.open("orders").await?;
    let (store, sink) = (place.store.clone(), place.sink.clone());
    match cli.command.unwrap_or(Do::Demo) {
        Do::Demo => demo(&store, &sink, &place.store_name).await?,
        Do::Status => {
            let head = store.head().await?;
            println!(
                "log head: {}",
                head.map_or("empty".into(), |h| h.to_string())
            );
            for cp in sink.projections().await? {
                println!(
                    "{:<17} version {} at position {}{}",
                    cp.projection,
                    cp.version,
                    cp.position().map_or("none".into(), |p| p.to_string()),
                    cp.rebuild.map_or(String::new(), |(v, n)| format!(
                        " (rebuilding version {v}: at {n})"
                    ))
                );
            }
        }
        Do::Rebuild { model } => with_model!(model, p => {
            maintain(Maintain::Rebuild, store, sink, p).await?
        }),
        Do::Reconcile { model, repair } => with_model!(model, p => {
            maintain(Maintain::Reconcile { repair }, store, sink, p).await?
        }),
        Do::Failures { model } => with_model!(model, p => {
            maintain(Maintain::Failures, store, sink, p).await?
        }),
    }
    Ok(())
}

/// Orders `first..first + n` of this run, each taken as far as its number says: placed,
/// paid, packed, shipped, delivered, or cancelled after payment.
async fn trade(
    handler: &CommandHandler<AnyStore>,
    run: &str,
    first: u32,
    n: u32,
) -> anyhow::Result<u64> {
    let customers = ["ann", "bob", "cy"];
    let mut last = 0;
    for i in first..first + n {
        let id = format!("{run}.{i}");
        let context = Context::new().with_actor("shop");
        let lines = vec![
            Line {
                sku: format!("sku-{}", i % 4),
                quantity: 1 + i % 3,
                price: 10,
            },
            Line {
                sku: "sku-gift".into(),
                quantity: 1,
                price: 5,
            },
        ];
        let mut steps = vec![Command::Place {
            customer: customers[i as usize % 3].into(),
            lines,
        }];
        let stage = i % 6;
        steps.extend(
            [
                Command::Pay,
                Command::Pack,
                Command::Ship {
                    carrier: if i % 2 == 0 { "dhl" } else { "ups" }.into(),
                },
                Command::Deliver,
            ]
            .into_iter()
            .take(if stage == 5 { 1 } else { stage as usize }),
        );
        if stage == 5 {
            steps.push(Command::Cancel {
                reason: "the customer changed their mind".into(),
            });
        }
        for c in steps {
            match handler.handle::<OrderDecider>(&id, &c, &context).await {
                Ok(h) => last = last.max(h.position.unwrap_or(0)),
                Err(CommandError::Rejected(r)) => anyhow::bail!("order {id}: {r}"),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(last)
}

async fn lines(sink: &Sink, sql: &str, params: &[Value]) -> anyhow::Result<Vec<String>> {
    Ok(sink
        .query(sql, params)
        .await?
        .iter()
        .map(|r| {
            let v: Vec<String> = r
                .iter()
                .map(|v| match v {
                    Value::Text(t) => t.clone(),
                    v => v.to_string(),
                })
                .collect();
            v.join(" ")
        })
        .collect())
}

async fn demo(store: &AnyStore, sink: &Sink, store_name: &str) -> anyhow::Result<()> {
    let run = format!(
        "{:04x}",
        annal_core::Timestamp::now().as_micros() as u16 ^ std::process::id() as u16
    );
    let like = [Value::from(format!("{run}.%"))];
    println!(
        "E-commerce orders on Annal ({store_name} store, read models in {})",
        sink.kind()
    );
    let handler = CommandHandler::new(store.clone());
    let three: Vec<Running> = vec![
        Runner::new(store.clone(), sink.clone(), OrderStatus).spawn(),
        Runner::new(store.clone(), sink.clone(), Shipping).spawn(),
        Runner::new(store.clone(), sink.clone(), Inventory).spawn(),
    ];

    println!("\n1. 24 orders, each taken part of the way; three read models from the same events");
    let last = trade(&handler, &run, 0, 24).await?;
    for r in &three {
        r.wait_for(last, READ_YOUR_WRITES).await?;
    }
    let status = lines(
        sink,
        "SELECT status, count(*) FROM order_status WHERE id LIKE $1 GROUP BY status \
         ORDER BY status",
        &like,
    )
    .await?;
    println!("   order status: {}", status.join(", "));
    let shipped = lines(
        sink,
        "SELECT carrier, count(*), count(delivered_at) FROM shipments WHERE id LIKE $1 \
         GROUP BY carrier ORDER BY carrier",
        &like,
    )
    .await?;
    for s in shipped {
        let v: Vec<&str> = s.split(' ').collect();
        println!("   shipping: {} shipped {}, delivered {}", v[0], v[1], v[2]);
    }
    let stock = lines(
        sink,
        "SELECT l.sku, CAST(sum(l.quantity) AS BIGINT) FROM order_lines l JOIN order_status o \
         ON o.id = l.order_id WHERE o.id LIKE $1 AND o.status IN ('placed', 'paid', 'packed') \
         GROUP BY l.sku ORDER BY l.sku",
        &like,
    )
    .await?;
    println!(
        "   inventory reserved by this run's open orders: {}",
        stock.join(", ")
    );

    println!("\n2. A fourth read model, revenue per customer, added later");
    let added = Runner::new(store.clone(), sink.clone(), CustomerRevenue).spawn();
    println!("   it backfills from the whole history while 12 more orders arrive");
    let last = trade(&handler, &run, 24, 12).await?;
    added.wait_for(last, READ_YOUR_WRITES).await?;
    for r in &three {
        r.wait_for(last, READ_YOUR_WRITES).await?;
    }
    let revenue = lines(
        sink,
        "SELECT c.customer, count(*), CAST(coalesce(sum(s.total), 0) AS BIGINT) FROM order_customers c \
         JOIN order_status s ON s.id = c.order_id WHERE c.order_id LIKE $1 \
         AND s.status <> 'placed' GROUP BY c.customer ORDER BY c.customer",
        &like,
    )
    .await?;
    for r in revenue {
        let v: Vec<&str> = r.split(' ').collect();
        println!("   {}: {} orders paid, {} in all", v[0], v[1], v[2]);
    }
    let orders = lines(
        sink,
        "SELECT count(*) FROM order_status WHERE id LIKE $1",
        &like,
    )
    .await?;
    println!(
        "   the first three kept running: order status holds {} orders of this run",
        orders[0]
    );
    let mut checked = Vec::new();
    for m in [
        Model::OrderStatus,
        Model::Shipping,
        Model::Inventory,
        Model::CustomerRevenue,
    ] {
        with_model!(m, p => {
            let name = p.name().to_string();
            let r = Runner::new(store.clone(), sink.clone(), p).reconcile(false).await?;
            checked.push(format!("{name} {}", r.differences.len()));
        });
    }
    println!(
        "   rows that differ from a replay of the log: {}",
        checked.join(", ")
    );
    for r in three.into_iter().chain([added]) {
        r.stop().await?;
    }
    Ok(())
}
