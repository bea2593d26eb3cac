//! The writer's hand-off to the relay: the notifications it has just committed, so that
//! the relay publishes them without reading them back. Reading back was two of the
//! relay's three queries per batch (the notifications, then their recipients), on the
//! database every producer shares.
//!
//! The outbox stays the authority. The relay still reads which ids are pending, in id
//! order, and takes from here only those ids; whatever is not here — another producer's
//! notifications, rows left by a restart, entries dropped to stay within the memory
//! bound — it reads from the database as before. An entry is only ever added after its
//! commit, so the relay can never see an id here that the outbox does not hold yet.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use reddot_shared::store::outbox::Publishable;
use tokio::sync::Notify;

/// Bytes of notifications held for the relay at most (estimated); beyond it the oldest
/// are dropped and read from the database.
const MAX_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct Handoff {
    /// Woken after a commit of new notifications, and when this relay becomes leader.
    pub wake: Notify,
    /// Whether this producer's relay holds the lease: a standby's relay publishes
    /// nothing, so nothing is kept for it.
    leading: AtomicBool,
    committed: Mutex<Committed>,
}

#[derive(Default)]
struct Committed {
    entries: BTreeMap<i64, (Publishable, usize)>,
    bytes: usize,
}

impl Handoff {
    /// Hands over notifications just committed (with their sorted recipients) and wakes
    /// the relay.
    pub fn committed(&self, batch: impl IntoIterator<Item = Publishable>) {
        if self.leading.load(Ordering::Acquire) {
            let mut held = self.lock();
            for item in batch {
                let size = estimated_size(&item);
                let id = item.0.id;
                held.bytes += size;
                if let Some((_, replaced)) = held.entries.insert(id, (item, size)) {
                    held.bytes -= replaced;
                }
            }
            while held.bytes > MAX_BYTES {
                let Some((_, (_, size))) = held.entries.pop_first() else {
                    break;
                };
                held.bytes -= size;
            }
        }
        self.wake.notify_one();
    }

    /// Records whether this producer's relay is the leader; on losing the lease what
    /// is held goes (a later leader reads it from the database).
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
        if !leading {
            *self.lock() = Committed::default();
        }
    }

    /// Takes the entries of `pending` (outbox ids, ascending, as the relay read them).
    /// Entries below the last of them that it does not list are dropped too: the outbox
    /// no longer holds them (commit order is id order, so a pending one could not be
    /// missing from a read that returned a higher id), another relay published them.
    pub fn take(&self, pending: &[i64]) -> HashMap<i64, Publishable> {
        let Some(&last) = pending.last() else {
            return HashMap::new();
        };
        let mut held = self.lock();
        let mut taken = HashMap::with_capacity(pending.len());
        for id in pending {
            if let Some((item, size)) = held.entries.remove(id) {
                held.bytes -= size;
                taken.insert(*id, item);
            }
        }
        while let Some(entry) = held.entries.first_entry()
            && *entry.key() <= last
        {
            let (_, size) = entry.remove();
            held.bytes -= size;
        }
        taken
    }

    fn lock(&self) -> MutexGuard<'_, Committed> {
        self.committed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Roughly what an entry costs in memory: its text, its recipients, and the overhead of
/// their allocations.
fn estimated_size((n, users): &Publishable) -> usize {
    let text = n.kind.len()
        + n.title.len()
        + n.body.len()
        + n.data.get().len()
        + n.sender.as_ref().map_or(0, String::len);
    let recipients: usize = users.iter().map(|u| u.len() + 24).sum();
    256 + text + recipients
}

#[cfg(test)]
mod tests {
    use reddot_shared::domain::{Audience, Notification};
    use serde_json::value::RawValue;

    use super::*;

    fn item(id: i64, body_len: usize) -> anyhow::Result<Publishable> {
        Ok((
            Notification {
                id,
                kind: "notice".into(),
                title: "t".into(),
                body: "b".repeat(body_len),
                data: RawValue::from_string("{}".into())?,
                sender: None,
                audience: Audience::User,
                created_at: 1,
                expires_at: None,
            },
            vec!["alice".into()],
        ))
    }

    fn held(handoff: &Handoff) -> Vec<i64> {
        handoff.lock().entries.keys().copied().collect()
    }

    fn leading() -> Handoff {
        let handoff = Handoff::default();
        handoff.set_leading(true);
        handoff
    }

    #[test]
    fn takes_what_is_pending_and_drops_what_the_outbox_no_longer_holds() -> anyhow::Result<()> {
        let handoff = leading();
        handoff.committed([item(3, 1)?, item(4, 1)?, item(5, 1)?, item(7, 1)?]);
        // 4 was published by another relay: the read went past it without it.
        let taken = handoff.take(&[3, 5]);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken.get(&5).map(|(n, _)| n.id), Some(5));
        assert_eq!(held(&handoff), [7], "4 kept, or 7 dropped");
        // Ids it does not hold (another producer's) are left for the database.
        assert!(handoff.take(&[6]).is_empty());
        assert_eq!(held(&handoff), [7]);
        assert_eq!(handoff.take(&[7]).len(), 1);
        assert!(held(&handoff).is_empty());
        assert_eq!(
            handoff.lock().bytes,
            0,
            "sizes out of step with the entries"
        );
        Ok(())
    }

    #[test]
    fn holds_a_bounded_amount_dropping_the_oldest() -> anyhow::Result<()> {
        let handoff = leading();
        let body = 1 << 20;
        handoff.committed(
            (1..=40)
                .map(|id| item(id, body))
                .collect::<Result<Vec<_>, _>>()?,
        );
        let ids = held(&handoff);
        assert!(handoff.lock().bytes <= MAX_BYTES);
        assert!(ids.len() < 40 && ids.len() >= 10, "{} held", ids.len());
        assert_eq!(ids.last(), Some(&40), "the newest were dropped");
        assert_eq!(ids, (41 - ids.len() as i64..=40).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn a_standby_holds_nothing() -> anyhow::Result<()> {
        let handoff = Handoff::default();
        handoff.committed([item(1, 1)?]);
        assert!(held(&handoff).is_empty(), "kept before leading");
        handoff.set_leading(true);
        handoff.committed([item(2, 1)?]);
        assert_eq!(held(&handoff), [2]);
        handoff.set_leading(false);
        assert!(held(&handoff).is_empty(), "kept after losing the lease");
        assert_eq!(handoff.lock().bytes, 0);
        Ok(())
    }
}
