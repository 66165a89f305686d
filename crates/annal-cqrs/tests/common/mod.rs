//! What the toolkit's tests share: a bank account written as a decider, and the two stores
//! every check runs on (the embedded engine, and a client of a server over loopback).

#![allow(dead_code)]

use std::sync::Arc;

use annal_client::Client;
use annal_cqrs::{Decider, Event};
use annal_engine::Store;
use annal_server::{Config, Server};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
    Closed,
}

impl Event for AccountEvent {}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Account {
    pub owner: Option<String>,
    pub balance: u64,
    pub closed: bool,
}

#[derive(Debug, Clone)]
pub enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the account is not open")]
    NotOpen,
    #[error("the account is closed")]
    Closed,
    #[error("the balance is {balance}, less than {wanted}")]
    InsufficientFunds { balance: u64, wanted: u64 },
}

pub struct BankAccount;

impl Decider for BankAccount {
    const CATEGORY: &'static str = "account";
    type State = Account;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = Refused;

    fn decide(s: &Account, c: &AccountCommand) -> Result<Vec<AccountEvent>, Refused> {
        if s.closed {
            return match c {
                AccountCommand::Close => Ok(vec![]),
                _ => Err(Refused::Closed),
            };
        }
        match (c, &s.owner) {
            (AccountCommand::Open { .. }, Some(_)) => Ok(vec![]),
            (AccountCommand::Open { owner }, None) => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            (_, None) => Err(Refused::NotOpen),
            (AccountCommand::Deposit { amount }, _) => {
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            (AccountCommand::Withdraw { amount }, _) if *amount > s.balance => {
                Err(Refused::InsufficientFunds {
                    balance: s.balance,
                    wanted: *amount,
                })
            }
            (AccountCommand::Withdraw { amount }, _) => {
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
            (AccountCommand::Close, _) => Ok(vec![AccountEvent::Closed]),
        }
    }

    fn evolve(mut s: Account, e: &AccountEvent) -> Account {
        match e {
            AccountEvent::Opened { owner } => s.owner = Some(owner.clone()),
            AccountEvent::Deposited { amount } => s.balance += amount,
            AccountEvent::Withdrawn { amount } => s.balance -= amount,
            AccountEvent::Closed => s.closed = true,
        }
        s
    }
}

/// The embedded engine in a folder of its own.
pub struct Embedded {
    pub store: Arc<Store>,
    _dir: tempfile::TempDir,
}

pub fn embedded() -> Embedded {
    let dir = tempfile::tempdir().unwrap();
    Embedded {
        store: Arc::new(Store::open(dir.path()).unwrap()),
        _dir: dir,
    }
}

/// A server of the test's own on a port the system picks, shut down when dropped.
pub struct Served {
    pub client: Client,
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(server.shutdown())
            })
            .unwrap();
        }
    }
}

pub async fn served() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let server = Server::start(config).await.unwrap();
    let client = Client::builder(format!("http://{}", server.local_addr()))
        .connect()
        .await
        .unwrap();
    Served {
        client,
        server: Some(server),
        _dir: dir,
    }
}

/// Emits, for each named check `async fn name<S: EventStore + Clone + 'static>(store: S)`,
/// one test on the embedded engine and one through a client of a server.
#[macro_export]
macro_rules! both_ways {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let e = $crate::common::embedded();
                    super::$name(e.store.clone()).await;
                }
            )*
        }
        mod served {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let s = $crate::common::served().await;
                    super::$name(s.client.clone()).await;
                }
            )*
        }
    };
}
