//! Bank accounts on Annal: accounts as deciders (open, deposit, withdraw with an
//! insufficient-funds rule), a `balances` read model kept by a projection, the balance now
//! and as of a past instant, a customer's dispute answered from the audit trail, and a
//! damaged read-model row found and repaired by reconciliation.
//!
//! `cargo run -p bank-account` tells the whole story; the subcommands do one thing each.

use annal_core::{ReadRequest, RecordedEvent, Source, Timestamp};
use annal_cqrs::projection::{Changes, ColumnType::*, Projection, Runner, Sink, Table, Value};
use annal_cqrs::{At, CommandError, CommandHandler, Context, Decider, Event};
use clap::{Parser, Subcommand};
use example_support::{maintain, AnyStore, Maintain, Where, READ_YOUR_WRITES};
use serde::{Deserialize, Serialize};

// ---- The domain -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
}

impl Event for AccountEvent {
    fn describe(&self) -> String {
        match self {
            AccountEvent::Opened { owner } => format!("opened for {owner}"),
            AccountEvent::Deposited { amount } => format!("deposited {amount}"),
            AccountEvent::Withdrawn { amount } => format!("withdrew {amount}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Account {
    owner: Option<String>,
    balance: u64,
}

#[derive(Debug, Clone)]
pub enum Command {
    Open { owner: String },
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the account is not open")]
    NotOpen,
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("insufficient funds: the balance is {balance}, the withdrawal {wanted}")]
    InsufficientFunds { balance: u64, wanted: u64 },
    #[error("an amount must be more than 0")]
    Zero,
}

pub struct BankAccount;

impl Decider for BankAccount {
    const CATEGORY: &'static str = "account";
    type State = Account;
    type Command = Command;
    type Event = AccountEvent;
    type Error = Refused;

    fn decide(s: &Account, c: &Command) -> Result<Vec<AccountEvent>, Refused> {
        match c {
            Command::Open { .. } if s.owner.is_some() => Err(Refused::AlreadyOpen),
            Command::Open { owner } => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            _ if s.owner.is_none() => Err(Refused::NotOpen),
            Command::Deposit { amount: 0 } | Command::Withdraw { amount: 0 } => Err(Refused::Zero),
            Command::Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
            Command::Withdraw { amount } if *amount > s.balance => {
                Err(Refused::InsufficientFunds {
                    balance: s.balance,
                    wanted: *amount,
                })
            }
            Command::Withdraw { amount } => Ok(vec![AccountEvent::Withdrawn { amount: *amount }]),
        }
    }

    fn evolve(mut s: Account, e: &AccountEvent) -> Account {
        match e {
            AccountEvent::Opened { owner } => s.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount } => s.balance += amount,
            AccountEvent::Withdrawn { amount } => s.balance -= amount,
        }
        s
    }
}

// ---- The read model -------------------------------------------------------------------

/// `balances`: one row per account, its owner, balance and how many movements it had.
pub struct Balances;

impl Projection for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    fn source(&self) -> Source {
        Source::Category(BankAccount::CATEGORY.into())
    }

    fn tables(&self) -> Vec<Table> {
        vec![Table::new("balances")
            .key("account", Text)
            .column("owner", Text)
            .column("balance", Int)
            .column("movements", Int)
            .index("by_owner", &["owner"])]
    }

    fn apply(
        &self,
        e: &AccountEvent,
        r: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        let account = r
            .stream_id
            .strip_prefix("account-")
            .unwrap_or(&r.stream_id)
            .to_string();
        let (sign, amount) = match e {
            AccountEvent::Opened { owner } => {
                out.upsert(
                    "balances",
                    [account.into(), owner.into(), 0.into(), 0.into()],
                );
                return Ok(());
            }
            AccountEvent::Deposited { amount } => ("+", amount),
            AccountEvent::Withdrawn { amount } => ("-", amount),
        };
        out.execute(
            format!(
                "UPDATE {{balances}} SET balance = balance {sign} $2, movements = movements + 1 \
                 WHERE account = $1"
            ),
            [account.into(), (*amount).into()],
        );
        Ok(())
    }
}

// ---- The command line -----------------------------------------------------------------

#[derive(Parser)]
#[command(about = "Bank accounts on Annal: a balance read model, time travel, an audit trail")]
struct Cli {
    #[command(flatten)]
    place: Where,
    #[command(subcommand)]
    command: Option<Do>,
}

#[derive(Subcommand)]
enum Do {
    /// The whole story, start to end (what runs without a subcommand).
    Demo,
    /// Open an account.
    Open { account: String, owner: String },
    /// Deposit into an account.
    Deposit { account: String, amount: u64 },
    /// Withdraw from an account; refused beyond its balance.
    Withdraw { account: String, amount: u64 },
    /// An account's balance from the read model, or as of an instant (RFC 3339) from the
    /// log.
    Balance {
        account: String,
        #[arg(long, value_name = "TIME")]
        as_of: Option<Timestamp>,
    },
    /// Every movement of an account: what, when, who.
    History { account: String },
    #[command(flatten)]
    Maintain(Maintain),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let place = cli.place.open("bank-account").await?;
    let bank = Bank {
        handler: CommandHandler::new(place.store.clone()),
        store: place.store.clone(),
        sink: place.sink.clone(),
    };
    match cli.command.unwrap_or(Do::Demo) {
        Do::Demo => demo(&bank, &place.store_name).await?,
        Do::Open { account, owner } => {
            bank.act(&account, Command::Open { owner }, "cli").await?;
            bank.print_balance(&account).await?;
        }
        Do::Deposit { account, amount } => {
            bank.act(&account, Command::Deposit { amount }, "cli")
                .await?;
            bank.print_balance(&account).await?;
        }
        Do::Withdraw { account, amount } => {
            bank.act(&account, Command::Withdraw { amount }, "cli")
                .await?;
            bank.print_balance(&account).await?;
        }
        Do::Balance { account, as_of } => match as_of {
            Some(t) => println!(
                "{account} as of {t}: {}",
                bank.balance_as_of(&account, t).await?
            ),
            None => bank.print_balance(&account).await?,
        },
        Do::History { account } => print!("{}", bank.history(&account).await?),
        Do::Maintain(what) => {
            maintain(what, bank.store.clone(), bank.sink.clone(), Balances).await?
        }
    }
    Ok(())
}

struct Bank {
    handler: CommandHandler<AnyStore>,
    store: AnyStore,
    sink: Sink,
}

impl Bank {
    /// Carries out a command as `actor`; returns the position written, if any.
    async fn act(&self, account: &str, c: Command, actor: &str) -> anyhow::Result<Option<u64>> {
        let context = Context::new().with_actor(actor);
        match self
            .handler
            .handle::<BankAccount>(account, &c, &context)
            .await
        {
            Ok(h) => Ok(h.position),
            Err(CommandError::Rejected(r)) => anyhow::bail!("{account}: refused: {r}"),
            Err(e) => Err(e.into()),
        }
    }

    /// Brings the read model up to the log's head (read your writes), then reads the row.
    async fn read_balance(&self, account: &str) -> anyhow::Result<Option<(String, i64)>> {
        let running = Runner::new(self.store.clone(), self.sink.clone(), Balances).spawn();
        if let Some(head) = annal_core::EventStore::head(&self.store).await? {
            running.wait_for(head, READ_YOUR_WRITES).await?;
        }
        running.stop().await?;
        self.read_balance_now(account).await
    }

    async fn print_balance(&self, account: &str) -> anyhow::Result<()> {
        match self.read_balance(account).await? {
            Some((owner, balance)) => println!("{account} ({owner}): balance {balance}"),
            None => println!("{account}: no such account"),
        }
        Ok(())
    }

    async fn balance_as_of(&self, account: &str, t: Timestamp) -> anyhow::Result<u64> {
        let then = self
            .handler
            .load_as_of::<BankAccount>(account, At::Time(t))
            .await?;
        Ok(then.state.balance)
    }

    /// The account's movements: revision, what, who, when.
    async fn movements(&self, account: &str) -> anyhow::Result<Vec<Movement>> {
        let stream = annal_cqrs::stream_id::<BankAccount>(account);
        let events = annal_core::EventStoreExt::read_to_vec(
            &self.store,
            ReadRequest::stream(stream.as_str()),
        )
        .await?;
        let mut out = Vec::new();
        for e in &events {
            for event in annal_cqrs::decode_recorded::<AccountEvent>(e, &Default::default())? {
                out.push(Movement {
                    revision: e.revision,
                    actor: e.metadata.actor.as_deref().unwrap_or("?").to_string(),
                    at: e.recorded_at,
                    event,
                });
            }
        }
        Ok(out)
    }

    async fn history(&self, account: &str) -> anyhow::Result<String> {
        let lines: Vec<String> = self
            .movements(account)
            .await?
            .iter()
            .map(|m| format!("{} at {}\n", m.line(), m.at))
            .collect();
        Ok(lines.concat())
    }
}

struct Movement {
    revision: u64,
    event: AccountEvent,
    actor: String,
    at: Timestamp,
}

impl Movement {
    fn line(&self) -> String {
        format!(
            "  #{} {:<14} by {}",
            self.revision,
            self.event.describe(),
            self.actor
        )
    }
}

/// The story: Alice's account, a refused withdrawal, a balance of 0 she disputes, and a
/// read model damaged and repaired.
async fn demo(bank: &Bank, store: &str) -> anyhow::Result<()> {
    // Account ids of their own, so that the story can be told again on the same server.
    let alice = format!(
        "alice-{:04x}",
        std::process::id() as u16 ^ (now_micros() as u16)
    );
    println!(
        "Bank accounts on Annal ({store} store, read models in {})",
        bank.sink.kind()
    );
    let running = Runner::new(bank.store.clone(), bank.sink.clone(), Balances).spawn();

    println!("\n1. Alice opens an account and moves money");
    bank.act(
        &alice,
        Command::Open {
            owner: "Alice".into(),
        },
        "teller-7",
    )
    .await?;
    for amount in [100, 50] {
        bank.act(&alice, Command::Deposit { amount }, "teller-7")
            .await?;
    }
    let last = bank
        .act(&alice, Command::Withdraw { amount: 30 }, "alice")
        .await?;
    running.wait_for(last.unwrap(), READ_YOUR_WRITES).await?;
    let balance = bank.row(&alice).await?;
    println!("   deposited 100 and 50, withdrew 30: balance {balance}");

    println!("\n2. A withdrawal beyond the balance is refused");
    match bank
        .act(&alice, Command::Withdraw { amount: 500 }, "alice")
        .await
    {
        Err(e) => println!("   {}", e.to_string().replace(&alice, "alice")),
        Ok(_) => anyhow::bail!("a withdrawal beyond the balance was accepted"),
    }

    let before = Timestamp::now();
    // Let the clock pass `before`, so that the next event is recorded after it.
    while Timestamp::now() <= before {
        std::hint::spin_loop();
    }
    let last = bank
        .act(&alice, Command::Withdraw { amount: 120 }, "atm-42")
        .await?;
    running.wait_for(last.unwrap(), READ_YOUR_WRITES).await?;

    println!("\n3. Alice asks: why is my balance 0?");
    let now = bank.row(&alice).await?;
    println!("   balance now: {now}");
    let then = bank.balance_as_of(&alice, before).await?;
    println!("   balance as of just before the last withdrawal: {then}");
    println!("   the audit trail of her account:");
    let movements = bank.movements(&alice).await?;
    for m in &movements {
        println!("  {}", m.line());
    }
    if let Some(m) = movements
        .iter()
        .rfind(|m| matches!(m.event, AccountEvent::Withdrawn { .. }))
    {
        println!(
            "   the answer: {} {} (revision {}), taking the balance from {then} to {now}",
            m.actor,
            m.event.describe(),
            m.revision
        );
    }

    println!("\n4. A read-model row is damaged, found and repaired");
    bank.sink
        .execute(
            "UPDATE balances SET balance = 1000 WHERE account = $1",
            &[Value::from(alice.as_str())],
        )
        .await?;
    let damaged = bank.row(&alice).await?;
    println!("   the balances table now says {damaged}");
    let found = Runner::new(bank.store.clone(), bank.sink.clone(), Balances)
        .reconcile(true)
        .await?;
    for d in &found.differences {
        if d.key.first() == Some(&Value::from(alice.as_str())) {
            println!(
                "   reconciliation: balance differs: live {}, replay of the log {}; repaired",
                d.live.as_ref().map_or(Value::Null, |r| r[2].clone()),
                d.replayed.as_ref().map_or(Value::Null, |r| r[2].clone())
            );
        }
    }
    let repaired = bank.row(&alice).await?;
    println!("   the balances table says {repaired} again");
    running.stop().await?;
    Ok(())
}

impl Bank {
    /// The row as the read model holds it now, without catching up.
    async fn read_balance_now(&self, account: &str) -> anyhow::Result<Option<(String, i64)>> {
        let rows = self
            .sink
            .query(
                "SELECT owner, balance FROM balances WHERE account = $1",
                &[Value::from(account)],
            )
            .await?;
        Ok(rows.first().map(|r| {
            (
                r[0].as_text().unwrap_or_default().to_string(),
                r[1].as_int().unwrap_or_default(),
            )
        }))
    }

    async fn row(&self, account: &str) -> anyhow::Result<i64> {
        let (_, balance) = self
            .read_balance_now(account)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{account} is not in the read model"))?;
        Ok(balance)
    }
}

fn now_micros() -> i64 {
    Timestamp::now().as_micros()
}
