//! What a client may do, and what it may hold: the one place where bearer tokens are
//! checked and appends are admitted into the in-flight budget, for gRPC, HTTP and the
//! framed protocol alike.

use annal_core::Error;
use tokio::sync::OwnedSemaphorePermit;

use crate::State;

/// What a request's token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Compares without stopping at the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a bearer token may do; `None` when it is no configured token.
fn token_access(state: &State, token: &[u8]) -> Option<Access> {
    let config = &state.config;
    if config
        .write_tokens
        .iter()
        .any(|t| same(t.as_bytes(), token))
    {
        return Some(Access::Write);
    }
    if config.read_tokens.iter().any(|t| same(t.as_bytes(), token)) {
        return Some(Access::Read);
    }
    None
}

impl State {
    /// What a client presenting `token` may do (everything when authentication is off), or
    /// the refusal: `Unauthenticated` without a valid token (`where_` says where the token
    /// goes), `PermissionDenied` for a read token when the request `appends`.
    pub(crate) fn authorize(
        &self,
        token: Option<&[u8]>,
        appends: bool,
        where_: &str,
    ) -> Result<Access, Error> {
        if !self.config.auth_enabled() {
            return Ok(Access::Write);
        }
        let access = token.and_then(|t| token_access(self, t)).ok_or_else(|| {
            Error::Unauthenticated(format!("a valid bearer token is required ({where_})"))
        })?;
        if appends && access == Access::Read {
            return Err(Error::PermissionDenied(
                "this token may read but not append".into(),
            ));
        }
        Ok(access)
    }

    /// The largest append message the server reads: the largest append's events and room
    /// for their framing. A larger one is refused before it is decoded.
    pub(crate) fn max_append_message(&self) -> usize {
        self.config.limits.max_append_bytes.saturating_add(1 << 20)
    }

    /// Waits for an append of `bytes` to be admitted: its share of the in-flight append
    /// budget, taken whole (two large requests never each hold half and wait for the
    /// other), and at most the whole budget. Held until the append has been answered.
    pub(crate) async fn admit(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Error> {
        let cap = self.config.limits.max_inflight_append_bytes;
        let permits = u32::try_from(bytes.clamp(1, cap)).unwrap_or(u32::MAX);
        std::sync::Arc::clone(&self.append_budget)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))
    }
}
