//! Consumer groups: many members share a source's events, each key (a stream, or a
//! correlation id) held by one member at a time and handled in log order, with retries,
//! parking and a dead-letter list.
//!
//! | file | what |
//! |---|---|
//! | `def.rs` | a group's definition and settings, and their checks |
//! | `machine.rs` | the dispatch as a pure state machine: keys, leases, acks, parking |
//! | `journal.rs` | definitions and durable state, in `groups/groups.journal` |
//! | `runtime.rs` | one running group: its task, its feed, its members' queues |
//! | `json.rs` | the JSON shapes of groups, for the HTTP API and the journal |
//!
//! [`Groups`] holds the running groups by name: it creates, changes and deletes them
//! (each change written to the journal before it is answered) and passes members' and
//! operators' requests to each group's task.

pub mod def;
pub(crate) mod grpc;
pub(crate) mod http;
pub mod journal;
pub mod json;
pub mod machine;
pub mod runtime;

#[cfg(test)]
mod model;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use annal_core::Error;
use tokio::sync::{mpsc, watch};

use crate::backend::Served;
use def::{GroupDef, GroupSettings, Start};
use journal::{Journal, Kept, Rec};
use runtime::{ask, Cmd, Status};

/// The most parked events one page lists, over HTTP and gRPC.
pub const MAX_PARKED_PAGE: usize = 10_000;

/// How many requests wait for one group's task at most.
const COMMAND_QUEUE: usize = 4096;

/// The epochs one run of the server may give out, per group: a run's epochs start at its
/// number times this, above every earlier run's.
const EPOCHS_PER_RUN: u64 = 1 << 40;

struct Running {
    id: u32,
    def: GroupDef,
    tx: mpsc::Sender<Cmd>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

struct Registry {
    groups: BTreeMap<String, Running>,
    next_id: u32,
}

/// The server's consumer groups.
pub struct Groups {
    registry: Mutex<Registry>,
    /// Serialises creating, changing and deleting, so the journal sees them in order.
    admin: tokio::sync::Mutex<()>,
    journal: Journal,
    run: u64,
    /// Group tasks started in this run.
    launches: std::sync::atomic::AtomicU64,
    store: Arc<dyn Served>,
    shutdown: watch::Receiver<bool>,
    max_groups: usize,
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("consumer group '{name}'"))
}

/// A definition as the journal keeps it (the API's JSON shape).
fn encode_def(def: &GroupDef) -> Vec<u8> {
    serde_json::to_vec(&json::GroupJson::from(def)).unwrap_or_default()
}

fn decode_def(bytes: &[u8]) -> Result<GroupDef, Error> {
    let json: json::GroupJson = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("group definition", e.to_string()))?;
    json.into_def(&GroupSettings::default())
}

impl Groups {
    /// Opens the groups journal in `data` and starts every group it holds.
    pub(crate) fn open(
        data: &Path,
        store: Arc<dyn Served>,
        shutdown: watch::Receiver<bool>,
        max_groups: usize,
    ) -> Result<Groups, Error> {
        let fs: Arc<dyn annal_engine::io::Fs> = Arc::new(annal_engine::io::StdFs);
        let (journal, opened) = Journal::open(fs, data)?;
        let groups = Groups {
            registry: Mutex::new(Registry {
                groups: BTreeMap::new(),
                next_id: opened.groups.keys().next_back().map_or(1, |id| id + 1),
            }),
            admin: tokio::sync::Mutex::new(()),
            journal,
            run: opened.run,
            launches: std::sync::atomic::AtomicU64::new(0),
            store,
            shutdown,
            max_groups,
        };
        for (id, kept) in opened.groups {
            let def = decode_def(&kept.def).map_err(|e| Error::Corruption {
                file: journal::dir(data)
                    .join("groups.journal")
                    .display()
                    .to_string(),
                offset: 0,
                problem: format!("group {id} has a definition that does not read: {e}"),
            })?;
            tracing::info!(group = %def.name, floor = kept.floor, parked = kept.dead.len(), "resuming a consumer group");
            let running = groups.launch(id, def.clone(), kept);
            groups.registry().groups.insert(def.name, running);
        }
        Ok(groups)
    }

    /// Starts group `id`'s task from what the journal keeps of it.
    fn launch(&self, id: u32, def: GroupDef, kept: Kept) -> Running {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let task = runtime::spawn(
            runtime::Start {
                id,
                def: def.clone(),
                kept,
                epoch: self.run.saturating_mul(EPOCHS_PER_RUN),
                // Each task of this run numbers its members from a range of its own, so
                // an ack (member, epoch) meant for an earlier task never matches one of
                // this task's deliveries.
                first_member: (self
                    .launches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1)
                    << 32,
            },
            Arc::clone(&self.store),
            self.journal.clone(),
            rx,
            stop_rx,
            self.shutdown.clone(),
        );
        Running {
            id,
            def,
            tx,
            stop,
            task,
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The command queue of the group `name`.
    pub fn sender(&self, name: &str) -> Result<mpsc::Sender<Cmd>, Error> {
        self.registry()
            .groups
            .get(name)
            .map(|r| r.tx.clone())
            .ok_or_else(|| not_found(name))
    }

    /// Creates a group; it starts at once.
    pub async fn create(&self, def: GroupDef) -> Result<Status, Error> {
        def.validate()?;
        let _admin = self.admin.lock().await;
        let id = {
            let r = self.registry();
            if r.groups.contains_key(&def.name) {
                return Err(Error::invalid(
                    "group name",
                    format!("a consumer group named '{}' exists already", def.name),
                ));
            }
            if r.groups.len() >= self.max_groups {
                return Err(Error::Unavailable(format!(
                    "the server has its most consumer groups ({}, max_groups)",
                    self.max_groups
                )));
            }
            r.next_id
        };
        let head = self.store.head().await?;
        let floor = match def.start {
            Start::Beginning => 0,
            Start::End => head.map_or(0, |h| h + 1),
            Start::Position(p) => p,
        };
        self.journal
            .write(vec![Rec::Define {
                id,
                floor,
                def: encode_def(&def),
            }])
            .await?;
        let kept = Kept {
            def: encode_def(&def),
            floor,
            ..Kept::default()
        };
        let running = self.launch(id, def.clone(), kept);
        let tx = running.tx.clone();
        {
            let mut r = self.registry();
            r.next_id = id + 1;
            r.groups.insert(def.name.clone(), running);
        }
        tracing::info!(group = %def.name, floor, "created a consumer group");
        ask(&tx, Cmd::Status).await
    }

    /// Changes a group's settings: its task stops (its members' deliveries end, and are
    /// delivered again after they rejoin) and starts again from what the journal holds.
    pub async fn change(
        &self,
        name: &str,
        settings: impl FnOnce(&GroupSettings) -> Result<GroupSettings, Error>,
    ) -> Result<Status, Error> {
        let _admin = self.admin.lock().await;
        let Some(old) = self.registry().groups.remove(name) else {
            return Err(not_found(name));
        };
        let mut def = old.def.clone();
        let changed = settings(&def.settings).and_then(|s| {
            def.settings = s;
            def.validate()
        });
        if let Err(e) = changed {
            self.registry().groups.insert(name.to_string(), old);
            return Err(e);
        }
        let id = old.id;
        stop(old).await;
        let written = self
            .journal
            .write(vec![Rec::Define {
                id,
                floor: 0,
                def: encode_def(&def),
            }])
            .await;
        // Whatever the write did, the group runs again from the journal's state; a failed
        // write leaves the old settings in the file, which the next start reads.
        let kept = self.kept(id).await;
        let kept = match kept {
            Ok(k) => k,
            Err(e) => return Err(e),
        };
        let running_def = if written.is_ok() {
            def.clone()
        } else {
            decode_def(&kept.def)?
        };
        let running = self.launch(id, running_def, kept);
        let tx = running.tx.clone();
        self.registry().groups.insert(name.to_string(), running);
        written?;
        tracing::info!(group = %name, "changed a consumer group's settings");
        ask(&tx, Cmd::Status).await
    }

    /// What the journal holds of group `id`, after every write queued so far.
    async fn kept(&self, id: u32) -> Result<Kept, Error> {
        self.journal
            .mirror(id)
            .await?
            .ok_or_else(|| Error::Internal(format!("group {id} is not in the journal")))
    }

    /// Deletes a group: its members' deliveries end and its state is gone.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let _admin = self.admin.lock().await;
        let id = self.take(name).await?;
        self.journal.write(vec![Rec::Delete(id)]).await?;
        tracing::info!(group = %name, "deleted a consumer group");
        Ok(())
    }

    /// Stops group `name` and takes it out of the running ones; returns its id.
    async fn take(&self, name: &str) -> Result<u32, Error> {
        let Some(old) = self.registry().groups.remove(name) else {
            return Err(not_found(name));
        };
        let id = old.id;
        stop(old).await;
        Ok(id)
    }

    /// Every group's status, by name.
    pub async fn list(&self) -> Result<Vec<Status>, Error> {
        let senders: Vec<mpsc::Sender<Cmd>> = self
            .registry()
            .groups
            .values()
            .map(|r| r.tx.clone())
            .collect();
        let mut out = Vec::with_capacity(senders.len());
        for tx in senders {
            match ask(&tx, Cmd::Status).await {
                Ok(s) => out.push(s),
                // Deleted or changed meanwhile.
                Err(Error::Unavailable(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// One group's status.
    pub async fn status(&self, name: &str) -> Result<Status, Error> {
        ask(&self.sender(name)?, Cmd::Status).await
    }

    /// Stops every group's task (the server is stopping).
    pub async fn stop_all(&self) {
        let all: Vec<Running> = std::mem::take(&mut self.registry().groups)
            .into_values()
            .collect();
        for r in all {
            stop(r).await;
        }
    }
}

/// Stops a group's task and waits for it: it ends its members' deliveries.
async fn stop(r: Running) {
    let Running { stop, task, .. } = r;
    let _ = stop.send(());
    let _ = task.await;
}
