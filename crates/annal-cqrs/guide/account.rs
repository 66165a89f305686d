// The bank account of docs/guide.md's first two blocks, which the later blocks include.

use annal_cqrs::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
    Closed,
}

impl Event for AccountEvent {
    // A sentence for people, used when a history is rendered.
    fn describe(&self) -> String {
        match self {
            AccountEvent::Opened { owner } => format!("opened the account for {owner}"),
            AccountEvent::Deposited { amount } => format!("deposited {amount}"),
            AccountEvent::Withdrawn { amount } => format!("withdrew {amount}"),
            AccountEvent::Closed => "closed the account".into(),
        }
    }
}

use annal_cqrs::{Decider, Snapshotting};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub owner: Option<String>,
    pub balance: u64,
    pub closed: bool,
}

#[derive(Debug, Clone)]
pub enum Command {
    Open { owner: String },
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the account is not open")]
    NotOpen,
    #[error("the balance is {balance}, less than {wanted}")]
    InsufficientFunds { balance: u64, wanted: u64 },
}

pub struct BankAccount;

impl Decider for BankAccount {
    const CATEGORY: &'static str = "account"; // account 42 lives in stream account-42
    type State = Account;
    type Command = Command;
    type Event = AccountEvent;
    type Error = Refused;

    fn decide(s: &Account, c: &Command) -> Result<Vec<AccountEvent>, Refused> {
        match c {
            Command::Open { .. } if s.owner.is_some() => Ok(vec![]), // already open
            Command::Open { owner } => Ok(vec![AccountEvent::Opened { owner: owner.clone() }]),
            _ if s.owner.is_none() || s.closed => Err(Refused::NotOpen),
            Command::Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
            Command::Withdraw { amount } if *amount > s.balance => {
                Err(Refused::InsufficientFunds { balance: s.balance, wanted: *amount })
            }
            Command::Withdraw { amount } => Ok(vec![AccountEvent::Withdrawn { amount: *amount }]),
            Command::Close => Ok(vec![AccountEvent::Closed]),
        }
    }

    fn evolve(mut s: Account, e: &AccountEvent) -> Account {
        match e {
            AccountEvent::Opened { owner } => s.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount } => s.balance += amount,
            AccountEvent::Withdrawn { amount } => s.balance = s.balance.saturating_sub(*amount),
            AccountEvent::Closed => s.closed = true,
        }
        s
    }

    // Keep a snapshot of the state every 100 events (see "Snapshots" below).
    fn snapshots() -> Option<Snapshotting<Account>> {
        Some(Snapshotting::json(1).every(100))
    }
}
