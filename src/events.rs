//! The operator event stream: what happened to users and their environments
//! (created, starting, ready, failed, paused, stopped, removed, culled; users
//! created, disabled, enabled, deleted), numbered and timestamped, for the admin
//! API's `GET /_spawngate/api/events`.
//!
//! A broadcast for live subscribers plus a bounded ring of the latest events, so
//! a client that reconnects with `?since=<seq>` misses nothing that is still in
//! memory. Publishing takes one short lock and never waits for subscribers: a
//! slow one lags and is told so.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for replay.
const RING: usize = 1024;

/// Events a live subscriber may fall behind by before it lags.
const CHANNEL: usize = 256;

/// One thing that happened.
#[derive(Clone, Debug, Serialize)]
pub struct OpEvent {
    /// Increasing from 1 within one run of spawngate.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// E.g. `container.ready`, `user.created`.
    pub kind: &'static str,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// What the culler did (`pause`, `stop`, `remove`) for `container.culled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// Why (a failure's detail, a cull's reason, who acted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The subject of an event: a user, and the environment's slug if it is about one.
pub struct Subject<'a> {
    pub user: &'a str,
    pub slug: Option<&'a str>,
}

struct Ring {
    next_seq: u64,
    events: VecDeque<Arc<OpEvent>>,
}

/// A cheap handle (clone it freely) on the stream.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<OpEvent>>,
    ring: Arc<Mutex<Ring>>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

/// A subscription: the replayed events first, then the live receiver.
pub struct Subscription {
    pub replay: Vec<Arc<OpEvent>>,
    /// Events after `since` that are no longer in memory (the ring moved on).
    pub missed: bool,
    pub live: broadcast::Receiver<Arc<OpEvent>>,
}

impl Events {
    pub fn new() -> Events {
        Events {
            tx: broadcast::channel(CHANNEL).0,
            ring: Arc::new(Mutex::new(Ring {
                next_seq: 1,
                events: VecDeque::with_capacity(RING),
            })),
        }
    }

    /// Records and broadcasts one event.
    pub fn publish(
        &self,
        kind: &'static str,
        subject: Subject<'_>,
        action: Option<&'static str>,
        reason: Option<String>,
    ) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let event = Arc::new(OpEvent {
            seq: ring.next_seq,
            at_ms: now_ms(),
            kind,
            user: subject.user.to_owned(),
            slug: subject.slug.map(str::to_owned),
            action,
            reason,
        });
        ring.next_seq += 1;
        if ring.events.len() == RING {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Under the lock, so a subscriber's replay and its live part neither
        // overlap nor leave a gap. No receivers is fine.
        let _ = self.tx.send(event);
    }

    /// Live events from now on, after those with a sequence number above `since`
    /// that are still kept (none if `since` is `None`).
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.tx.subscribe();
        let Some(since) = since else {
            return Subscription {
                replay: Vec::new(),
                missed: false,
                live,
            };
        };
        let oldest = ring.events.front().map_or(ring.next_seq, |e| e.seq);
        Subscription {
            replay: ring
                .events
                .iter()
                .filter(|e| e.seq > since)
                .cloned()
                .collect(),
            missed: since.saturating_add(1) < oldest,
            live,
        }
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.ring.lock().map(|r| r.next_seq).unwrap_or(0)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Subject<'static> {
        Subject {
            user: "alice",
            slug: Some("abc"),
        }
    }

    #[tokio::test]
    async fn numbers_events_and_replays_from_the_ring() {
        let events = Events::new();
        events.publish("user.created", alice(), None, None);
        events.publish("container.starting", alice(), None, None);
        let mut sub = events.subscribe(Some(1));
        assert_eq!(sub.replay.len(), 1);
        assert_eq!(sub.replay[0].seq, 2);
        assert!(!sub.missed);
        events.publish("container.ready", alice(), None, None);
        let live = sub.live.recv().await.unwrap();
        assert_eq!((live.seq, live.kind), (3, "container.ready"));
        assert!(events.subscribe(None).replay.is_empty());
    }

    #[test]
    fn a_since_older_than_the_ring_is_reported_as_missed() {
        let events = Events::new();
        for _ in 0..RING + 10 {
            events.publish("container.ready", alice(), None, None);
        }
        let sub = events.subscribe(Some(0));
        assert!(sub.missed);
        assert_eq!(sub.replay.len(), RING);
        assert_eq!(sub.replay[0].seq, 11);
        assert!(!events.subscribe(Some(10)).missed);
    }
}
