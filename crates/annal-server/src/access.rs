//! What a client may do, and what it may hold: the one place where bearer tokens are
//! checked and appends are admitted into the in-flight budget, for gRPC, HTTP and the
//! framed protocol alike.

use std::sync::Arc;

use annal_core::{AppendRequest, Bytes, Error};
use tokio::sync::OwnedSemaphorePermit;

use crate::State;

/// What a request's token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Whether `given` is `secret`, in a time that depends on `given` alone: neither where
/// they first differ nor the secret's length shows in how long it takes.
fn same(secret: &[u8], given: &[u8]) -> bool {
    if secret.is_empty() {
        return false;
    }
    let mut differ = u8::from(secret.len() != given.len());
    for (i, g) in given.iter().enumerate() {
        differ |= g ^ secret[i % secret.len()];
    }
    std::hint::black_box(differ) == 0
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
                "this token may read but not write".into(),
            ));
        }
        Ok(access)
    }

    /// The largest append message the server reads: the largest append's events and room
    /// for their framing. A larger one is refused before it is decoded.
    pub(crate) fn max_append_message(&self) -> usize {
        self.config.limits.max_append_bytes.saturating_add(1 << 20)
    }

    /// Takes `bytes` more of the in-flight append budget for the append that `hold` is the
    /// share of, before those bytes of its body are read: an append pays for what it has
    /// received, so a client that declares a large body and sends nothing holds nothing.
    ///
    /// Appends that each hold part of the budget could wait for each other for ever once it
    /// is spent; so an append that holds some and must wait may instead take the one
    /// overdraft, and then reads the rest of its body without paying until it is answered.
    /// Memory for appends in flight stays under the budget plus one largest append.
    pub(crate) async fn take(&self, hold: &Budget, bytes: usize) -> Result<(), Error> {
        let cap = self.config.limits.max_inflight_append_bytes;
        let n = u32::try_from(bytes.clamp(1, cap)).unwrap_or(u32::MAX);
        let partial = {
            let h = hold.lock().unwrap_or_else(|e| e.into_inner());
            if h.overdraft.is_some() {
                return Ok(());
            }
            h.paid.is_some()
        };
        let closed = || Error::Unavailable("the server is shutting down".into());
        let got = match Arc::clone(&self.append_budget).try_acquire_many_owned(n) {
            Ok(p) => Taken::Paid(p),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(closed()),
            Err(tokio::sync::TryAcquireError::NoPermits) if partial => {
                let overdraft = Arc::clone(&self.overdraft);
                tokio::select! {
                    p = Arc::clone(&self.append_budget).acquire_many_owned(n) => {
                        Taken::Paid(p.map_err(|_| closed())?)
                    }
                    o = overdraft.acquire_owned() => Taken::Overdraft(o.map_err(|_| closed())?),
                }
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let budget = Arc::clone(&self.append_budget);
                Taken::Paid(budget.acquire_many_owned(n).await.map_err(|_| closed())?)
            }
        };
        let mut h = hold.lock().unwrap_or_else(|e| e.into_inner());
        match got {
            Taken::Paid(p) => match &mut h.paid {
                Some(paid) => paid.merge(p),
                None => h.paid = Some(p),
            },
            Taken::Overdraft(o) => {
                crate::metrics::overdraft();
                h.overdraft = Some(o);
            }
        }
        Ok(())
    }
}

/// Makes the request's events carry its share of the budget, so that the share goes back
/// when the store lets go of them, not when it answers: the store keeps a request whole
/// until it has applied it, which may be a little after the answer (the writer forgets
/// applied requests when it is idle or starts its next group). Memory and budget then
/// agree: a flood cannot fill the budget again while the last one's bytes are still held.
pub(crate) fn ride_along(request: &mut AppendRequest, share: &Budget) {
    /// An event's data, and the share it keeps.
    struct Paid {
        data: Bytes,
        _share: Budget,
    }
    impl AsRef<[u8]> for Paid {
        fn as_ref(&self) -> &[u8] {
            &self.data
        }
    }
    // One event is enough: the store drops a request's events together.
    if let Some(e) = request
        .streams
        .iter_mut()
        .flat_map(|s| &mut s.events)
        .next()
    {
        let data = std::mem::take(&mut e.data);
        e.data = Bytes::from_owner(Paid {
            data,
            _share: Arc::clone(share),
        });
    }
}

enum Taken {
    Paid(OwnedSemaphorePermit),
    Overdraft(OwnedSemaphorePermit),
}

/// What one append holds of the in-flight budget: the bytes it has received so far, and the
/// overdraft once it has taken it (see [`State::take`]). Given back when it is dropped,
/// once the store has answered the append.
#[derive(Default)]
pub struct Hold {
    paid: Option<OwnedSemaphorePermit>,
    overdraft: Option<OwnedSemaphorePermit>,
}

/// The share of the in-flight append budget that one request holds.
pub type Budget = Arc<std::sync::Mutex<Hold>>;

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_match_only_whole() {
        assert!(same(b"secret-token", b"secret-token"));
        for given in [
            &b""[..],
            b"secret",
            b"secret-token-",
            b"secret-tokem",
            b"secret-tokensecret",
        ] {
            assert!(!same(b"secret-token", given), "{given:?}");
        }
        assert!(!same(b"", b""));
    }
}
