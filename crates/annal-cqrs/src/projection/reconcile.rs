//! Reconciliation: is the live read model what the log says it should be? Replay into a
//! check copy up to the live checkpoint, compare row by row, and optionally repair.

use std::time::Duration;

use annal_core::{next_item, EventStore, SubscriptionItem};

use super::runner::{Cursor, Halt, Pending, Phase, Runner};
use super::sink::Difference;
use super::sql::Target;
use super::{Projection, ProjectionError};

/// What a reconciliation found.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    pub projection: String,
    /// The live checkpoint the comparison was made at: every position below it.
    pub next_position: u64,
    /// Rows that differ, by table and key.
    pub differences: Vec<Difference>,
    /// True when the live rows were made equal to the replayed ones.
    pub repaired: bool,
}

impl<S: EventStore + 'static, P: Projection> Runner<S, P> {
    /// Replays the log into a check copy of the tables up to the live checkpoint, compares it
    /// with the live tables row by row, and with `repair` makes the live rows equal to the
    /// replayed ones. A runner of the projection may go on meanwhile: the comparison (and the
    /// repair) happen in one transaction that holds the checkpoint still, after the copy has
    /// caught up with it.
    pub async fn reconcile(mut self, repair: bool) -> Result<Reconciled, ProjectionError> {
        self.check_definition()?;
        let name = self.name().to_string();
        let version = self.projection.version();
        let cp = self
            .sink
            .checkpoint(&name)
            .await
            .map_err(|e| self.sink_error(e))?
            .ok_or_else(|| self.invalid("has no read model in this sink yet".into()))?;
        if cp.version != version {
            return Err(self.invalid(format!(
                "the live tables are of version {}, this code is version {version}: \
                 rebuild rather than reconcile",
                cp.version
            )));
        }
        self.sink
            .fresh_copy(
                &name,
                Target::Check,
                version,
                cp.generation,
                self.tables.clone(),
            )
            .await
            .map_err(|e| self.sink_error(e))?
            .ok_or_else(|| {
                self.invalid("was rebuilt while the check began; run it again".into())
            })?;
        let r = self.check(cp.next_position, repair).await;
        if let Err(e) = self
            .sink
            .drop_copy(Target::Check, self.tables.clone())
            .await
        {
            tracing::warn!(projection = name, error = %e, "dropping the check copy failed");
        }
        let (next_position, differences) = r?;
        self.status.send_modify(|s| s.phase = Phase::Stopped);
        Ok(Reconciled {
            projection: name,
            next_position,
            differences,
            repaired: repair,
        })
    }

    async fn check(
        &mut self,
        mut until: u64,
        repair: bool,
    ) -> Result<(u64, Vec<super::Difference>), ProjectionError> {
        let mut cur = Cursor {
            target: Target::Check,
            guard: 0,
            next: 0,
        };
        self.status.send_modify(|s| {
            s.phase = Phase::Checking;
            s.rebuilding = Some(0);
        });
        let mut sub = self.subscribe(0).await?;
        // An event read past `until`, kept for when `until` moves past it.
        let mut carry = None;
        // Every position below this is delivered (the subscription's markers).
        let mut known = 0;
        for _ in 0..100 {
            while cur.next < until {
                let mut pending = Pending::new(cur.next);
                pending.to = pending.to.max(known.min(until));
                let mut failed = None;
                let mut items = 0;
                while items < self.settings.batch && pending.to < until {
                    let item = if let Some(e) = carry.take() {
                        Some(Ok(SubscriptionItem::Event(e)))
                    } else if items == 0 {
                        next_item(&mut sub).await
                    } else {
                        match futures_util::FutureExt::now_or_never(next_item(&mut sub)) {
                            Some(item) => item,
                            None => break,
                        }
                    };
                    items += 1;
                    match item {
                        Some(Ok(SubscriptionItem::Event(e))) => {
                            if e.position < pending.to {
                                continue;
                            }
                            if e.position >= until {
                                pending.to = until;
                                carry = Some(e);
                                break;
                            }
                            if let Err(halt) = self.take(&mut pending, &cur, &e).await? {
                                failed = Some(match halt {
                                    Halt::Failed(e) => e,
                                    Halt::Stopped => self.invalid("stopped".into()),
                                });
                                break;
                            }
                        }
                        Some(Ok(SubscriptionItem::CaughtUp { position })) => {
                            known = known.max(position.map_or(0, |p| p + 1));
                            pending.to = pending.to.max(known.min(until));
                        }
                        Some(Ok(SubscriptionItem::Checkpoint { position })) => {
                            known = known.max(position + 1);
                            pending.to = pending.to.max(known.min(until));
                        }
                        Some(Err(e)) => return Err(self.store_error(e)),
                        None => {
                            return Err(self.store_error(annal_core::Error::Unavailable(
                                "the subscription ended".into(),
                            )))
                        }
                    }
                }
                if !pending.is_empty() {
                    cur.next = self
                        .commit(pending, &cur)
                        .await?
                        .expect("a check copy has no checkpoint to lose");
                    self.status.send_modify(|s| s.rebuilding = Some(cur.next));
                }
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            match self
                .sink
                .compare(self.name(), until, repair, self.tables.clone())
                .await
                .map_err(|e| self.sink_error(e))?
            {
                Ok(diffs) => return Ok((until, diffs)),
                // The runner moved on while the copy was replayed: catch the copy up.
                Err(at) if at > until => until = at,
                Err(at) => {
                    return Err(self.invalid(format!(
                        "the checkpoint went back from {until} to {at} (a rebuild?); run it again"
                    )))
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Err(self.invalid(
            "the live checkpoint kept moving during 100 comparisons; stop the runner to \
             reconcile"
                .into(),
        ))
    }
}
