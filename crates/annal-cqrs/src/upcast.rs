//! Upcasting: events stored under an older schema brought up to the shape the code reads
//! now, as they are read, without rewriting the log.
//!
//! An upcaster is registered for one (event type, schema version) and turns one such event
//! into one or more events of a later version, under the same type or another (a rename),
//! so that upcasters chain: v1 -> v2 -> v3. Reading applies them until none is registered
//! for what it holds; the application only ever decodes current versions.
//!
//! ```
//! use annal_cqrs::{Upcasters, Upcast};
//! use serde_json::json;
//!
//! let upcasters = Upcasters::new()
//!     // v1 kept the amount in cents under another name.
//!     .on("Deposited", 1, |data| {
//!         let cents = data["cents"].as_u64().ok_or("no cents")?;
//!         Ok(vec![Upcast::new("Deposited", 2, json!({ "amount": cents / 100 }))])
//!     })
//!     .rename("MoneyIn", 1, "Deposited");
//! let out = upcasters.upcast("MoneyIn", 1, json!({ "cents": 500 })).unwrap();
//! assert_eq!(out, [Upcast::new("Deposited", 2, json!({ "amount": 5 }))]);
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::CodecError;

/// An event on its way to the current schema: its type, version and JSON data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upcast {
    pub event_type: String,
    pub schema_version: u32,
    pub data: Value,
}

impl Upcast {
    pub fn new(event_type: impl Into<String>, schema_version: u32, data: Value) -> Self {
        Upcast {
            event_type: event_type.into(),
            schema_version,
            data,
        }
    }
}

type Step = dyn Fn(Value) -> Result<Vec<Upcast>, String> + Send + Sync;

/// The upcasters a reader applies, keyed by the (event type, schema version) they take.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Arc<Step>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

/// How many steps one stored event may take before the chain is taken for a loop.
const MAX_STEPS: usize = 64;

impl Upcasters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step for events of `event_type` at `version`: it returns the events
    /// they become (one, or several to split one), each of a later version or another
    /// type. An error refuses the event, naming it.
    pub fn on(
        mut self,
        event_type: &str,
        version: u32,
        step: impl Fn(Value) -> Result<Vec<Upcast>, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .insert((event_type.to_string(), version), Arc::new(step));
        self
    }

    /// Registers a rename: events of `from` at `version` become events of `to`, same version,
    /// same data.
    pub fn rename(self, from: &str, version: u32, to: &str) -> Self {
        let to = to.to_string();
        self.on(from, version, move |data| {
            Ok(vec![Upcast::new(to.clone(), version, data)])
        })
    }

    /// True when an event of this type and version would be changed.
    pub fn applies(&self, event_type: &str, version: u32) -> bool {
        !self.steps.is_empty() && self.steps.contains_key(&(event_type.to_string(), version))
    }

    /// Brings one stored event up to date: the events it is now, in order.
    pub fn upcast(
        &self,
        event_type: &str,
        version: u32,
        data: Value,
    ) -> Result<Vec<Upcast>, CodecError> {
        let mut done = Vec::new();
        // Events still to look at, the next one last.
        let mut todo = vec![(Upcast::new(event_type, version, data), 0usize)];
        while let Some((e, steps)) = todo.pop() {
            let Some(step) = self.steps.get(&(e.event_type.clone(), e.schema_version)) else {
                done.push(e);
                continue;
            };
            if steps == MAX_STEPS {
                return Err(CodecError::new(
                    event_type,
                    format!(
                        "version {version} is still being upcast after {MAX_STEPS} steps \
                         (at '{}' version {}): do the upcasters loop?",
                        e.event_type, e.schema_version
                    ),
                ));
            }
            let from = format!("'{}' version {}", e.event_type, e.schema_version);
            let next = step(e.data).map_err(|problem| {
                CodecError::new(event_type, format!("upcasting {from} failed: {problem}"))
            })?;
            todo.extend(next.into_iter().rev().map(|n| (n, steps + 1)));
        }
        Ok(done)
    }
}
