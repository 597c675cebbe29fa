//! The one state machine of a user's environment as spawngate sees it: every
//! change of [`Phase`] is an [`Event`] applied by [`next`], through a [`PhaseCell`].
//! Requests wait on the cell; nothing else writes to it.
//!
//! The other notions are views or inputs, never a second machine: the runtime's
//! observation ([`crate::runtime::RunState`]) enters as an event (`Seen…`,
//! `Observed`); [`super::Readiness`] is the answer a request gets from a phase;
//! [`crate::runtime::ContainerState`] is the admin API's view of phase and
//! observation together; [`crate::store::Desired`] is the intent written to the
//! store before any runtime call, for reconciliation after a crash.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use tokio::sync::watch;

use super::{SpawnError, backoff};
use crate::time::unix_now;

/// What spawngate believes about a user's environment.
#[derive(Clone, Debug)]
pub enum Phase {
    /// Not looked at since start-up (or events may have been missed).
    Unknown,
    Starting,
    /// Running and answered a probe.
    Ready,
    /// Frozen by the culler; the next request unpauses it.
    Paused,
    Stopped,
    Failed {
        error: SpawnError,
        at: Instant,
    },
}

/// Something that happened to an environment (or was decided about it).
#[derive(Clone, Debug)]
pub enum Event {
    /// A request (or login) wants it running; `app_failures` sets the back-off
    /// after a failure.
    Kick {
        app_failures: u32,
    },
    /// Not started: no place within `limits.max_running`.
    Refused(SpawnError),
    /// The spawn finished: the app answers.
    Answered,
    /// The spawn failed.
    SpawnFailed(SpawnError),
    /// Created without starting (`lifecycle.precreate`).
    Created,
    /// An admin's start: retry at once, whatever the back-off.
    ClearFailure,
    /// Stopped or removed on purpose (admin, delete, least-recently-used stop).
    Stop,
    /// The culler's tiers.
    CullPause,
    CullStop,
    CullRemove,
    /// The runtime reports it paused (by the culler, or by hand).
    SeenPaused,
    /// The runtime reports it stopped or gone, or does not list it.
    SeenGone,
    /// Events may have been missed (the stream broke): check again when asked.
    Doubt,
    /// A runtime call on it failed: its real state is unknown.
    Lost,
    /// Reconciliation's reading (only replaces [`Phase::Unknown`]).
    Observed(Observed),
}

/// What reconciliation can find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Running and answering.
    Ready,
    /// Running but not answering: the next request probes it.
    Unsure,
    Paused,
    Stopped,
}

/// The phase after `event`, or `None` if the event changes nothing from `phase`.
pub fn next(phase: &Phase, event: &Event) -> Option<Phase> {
    use Phase as P;
    let to = match (phase, event) {
        (P::Starting | P::Ready, Event::Kick { .. }) => return None,
        (P::Failed { error, at }, Event::Kick { app_failures })
            if at.elapsed() < backoff(error, *app_failures) =>
        {
            return None;
        }
        (_, Event::Kick { .. }) => P::Starting,

        (P::Starting | P::Ready | P::Paused, Event::Refused(_)) => return None,
        (_, Event::Refused(error)) => P::Failed {
            error: error.clone(),
            at: Instant::now(),
        },

        // Only the spawn's own plan: an admin stop or a delete meanwhile wins.
        (P::Starting, Event::Answered) => P::Ready,
        (P::Starting, Event::SpawnFailed(error)) => P::Failed {
            error: error.clone(),
            at: Instant::now(),
        },
        (_, Event::Answered | Event::SpawnFailed(_)) => return None,

        (P::Unknown, Event::Created) => P::Stopped,
        (P::Failed { .. }, Event::ClearFailure) => P::Stopped,

        (P::Stopped, Event::Stop) => return None,
        (_, Event::Stop) => P::Stopped,

        (P::Ready, Event::CullPause) => P::Paused,
        (P::Ready | P::Paused, Event::CullStop) => P::Stopped,
        (P::Ready | P::Paused | P::Stopped, Event::CullRemove) => P::Stopped,

        (P::Ready, Event::SeenPaused) => P::Paused,
        (P::Ready | P::Paused, Event::SeenGone) => P::Unknown,
        (P::Ready, Event::Doubt) => P::Unknown,
        // A spawn under way finds out for itself.
        (P::Unknown | P::Starting, Event::Lost) => return None,
        (_, Event::Lost) => P::Unknown,

        (P::Unknown, Event::Observed(seen)) => match seen {
            Observed::Ready => P::Ready,
            Observed::Unsure => return None,
            Observed::Paused => P::Paused,
            Observed::Stopped => P::Stopped,
        },
        _ => return None,
    };
    Some(to)
}

/// Told of every change of phase, with the event that made it (the operator
/// event stream listens here). Called under the cell's lock: keep it short.
pub type Observer = Box<dyn Fn(&Phase, &Event) + Send + Sync>;

/// A phase that requests can wait on, changed only by [`PhaseCell::apply`].
pub struct PhaseCell {
    tx: watch::Sender<Phase>,
    /// Unix seconds of the last change; 0 = none since start-up.
    since: AtomicI64,
    observer: Option<Observer>,
}

impl PhaseCell {
    pub fn new(phase: Phase) -> PhaseCell {
        PhaseCell {
            tx: watch::channel(phase).0,
            since: AtomicI64::new(0),
            observer: None,
        }
    }

    pub fn observed(phase: Phase, observer: Observer) -> PhaseCell {
        PhaseCell {
            observer: Some(observer),
            ..PhaseCell::new(phase)
        }
    }

    /// Applies `event`; returns whether the phase changed (and waiters woke).
    pub fn apply(&self, event: Event) -> bool {
        self.tx.send_if_modified(|p| match next(p, &event) {
            Some(to) => {
                *p = to;
                self.since.store(unix_now(), Ordering::Relaxed);
                if let Some(observer) = &self.observer {
                    observer(p, &event);
                }
                true
            }
            None => false,
        })
    }

    /// Unix seconds the current phase began, if it changed since start-up.
    pub fn since(&self) -> Option<i64> {
        Some(self.since.load(Ordering::Relaxed)).filter(|s| *s > 0)
    }

    /// The current phase (hold it briefly: writers wait for the borrow).
    pub fn borrow(&self) -> watch::Ref<'_, Phase> {
        self.tx.borrow()
    }

    pub fn get(&self) -> Phase {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.tx.subscribe()
    }

    /// Tests: pretend a failure happened `ago` earlier.
    #[cfg(test)]
    pub fn age_failure(&self, ago: std::time::Duration) {
        self.tx.send_modify(|p| {
            if let Phase::Failed { at, .. } = p {
                *at -= ago;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn name(p: &Phase) -> &'static str {
        match p {
            Phase::Unknown => "unknown",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Paused => "paused",
            Phase::Stopped => "stopped",
            Phase::Failed { error, at } => {
                let fresh = at.elapsed() < Duration::from_secs(60);
                match (error, fresh) {
                    (SpawnError::App(_), true) => "failed(app, backing off)",
                    (SpawnError::App(_), false) => "failed(app, back-off over)",
                    (_, true) => "failed(backing off)",
                    (_, false) => "failed(back-off over)",
                }
            }
        }
    }

    fn parse(s: &str) -> Phase {
        let error = || SpawnError::DockerDown("refused".into());
        let app = || {
            SpawnError::App(super::super::AppFailure {
                reason: "exited".into(),
                exit_code: Some(1),
                logs: Vec::new(),
            })
        };
        let long_ago = Instant::now() - Duration::from_secs(3600);
        match s {
            "unknown" => Phase::Unknown,
            "starting" => Phase::Starting,
            "ready" => Phase::Ready,
            "paused" => Phase::Paused,
            "stopped" => Phase::Stopped,
            "failed(backing off)" => Phase::Failed {
                error: error(),
                at: Instant::now(),
            },
            "failed(back-off over)" => Phase::Failed {
                error: error(),
                at: long_ago,
            },
            "failed(app, backing off)" => Phase::Failed {
                error: app(),
                at: Instant::now(),
            },
            "failed(app, back-off over)" => Phase::Failed {
                error: app(),
                at: long_ago,
            },
            other => panic!("no phase {other}"),
        }
    }

    fn event(s: &str) -> Event {
        let capacity = || SpawnError::Capacity("full".into());
        match s {
            "kick" => Event::Kick { app_failures: 1 },
            "refused" => Event::Refused(capacity()),
            "answered" => Event::Answered,
            "spawn failed" => Event::SpawnFailed(SpawnError::Failed("boom".into())),
            "created" => Event::Created,
            "clear failure" => Event::ClearFailure,
            "stop" => Event::Stop,
            "cull pause" => Event::CullPause,
            "cull stop" => Event::CullStop,
            "cull remove" => Event::CullRemove,
            "seen paused" => Event::SeenPaused,
            "seen gone" => Event::SeenGone,
            "doubt" => Event::Doubt,
            "lost" => Event::Lost,
            "observed ready" => Event::Observed(Observed::Ready),
            "observed unsure" => Event::Observed(Observed::Unsure),
            "observed paused" => Event::Observed(Observed::Paused),
            "observed stopped" => Event::Observed(Observed::Stopped),
            other => panic!("no event {other}"),
        }
    }

    /// Every phase against every event: `-` means nothing changes. Failed
    /// phases are named by whether their back-off is over.
    const TABLE: &str = "
        event            | unknown  | starting | ready    | paused   | stopped  | failed(backing off) | failed(back-off over)
        kick             | starting | -        | -        | starting | starting | -                   | starting
        refused          | failed(backing off) | - | -    | -        | failed(backing off) | failed(backing off) | failed(backing off)
        answered         | -        | ready    | -        | -        | -        | -                   | -
        spawn failed     | -        | failed(backing off) | - | -   | -        | -                   | -
        created          | stopped  | -        | -        | -        | -        | -                   | -
        clear failure    | -        | -        | -        | -        | -        | stopped             | stopped
        stop             | stopped  | stopped  | stopped  | stopped  | -        | stopped             | stopped
        cull pause       | -        | -        | paused   | -        | -        | -                   | -
        cull stop        | -        | -        | stopped  | stopped  | -        | -                   | -
        cull remove      | -        | -        | stopped  | stopped  | stopped  | -                   | -
        seen paused      | -        | -        | paused   | -        | -        | -                   | -
        seen gone        | -        | -        | unknown  | unknown  | -        | -                   | -
        doubt            | -        | -        | unknown  | -        | -        | -                   | -
        lost             | -        | -        | unknown  | unknown  | unknown  | unknown             | unknown
        observed ready   | ready    | -        | -        | -        | -        | -                   | -
        observed unsure  | -        | -        | -        | -        | -        | -                   | -
        observed paused  | paused   | -        | -        | -        | -        | -                   | -
        observed stopped | stopped  | -        | -        | -        | -        | -                   | -
    ";

    #[test]
    fn transitions_follow_the_table() {
        let mut lines = TABLE.trim().lines();
        let header: Vec<&str> = lines.next().unwrap().split('|').map(str::trim).collect();
        let mut checked = 0;
        for line in lines {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            assert_eq!(cells.len(), header.len(), "{line}");
            let ev = event(cells[0]);
            for (from, want) in header[1..].iter().zip(&cells[1..]) {
                let got = next(&parse(from), &ev);
                let got = got.as_ref().map(name).unwrap_or("-");
                assert_eq!(got, *want, "{from} × {}", cells[0]);
                checked += 1;
            }
        }
        assert_eq!(checked, 18 * 7);
    }

    #[test]
    fn app_failures_back_off_longer_than_docker_failures() {
        let app = parse("failed(app, backing off)");
        if let Phase::Failed { error, .. } = &app {
            // Docker's 2 s are over, the app's 5 s are not.
            let at = Instant::now() - Duration::from_secs(3);
            let aged = Phase::Failed {
                error: error.clone(),
                at,
            };
            assert!(next(&aged, &Event::Kick { app_failures: 1 }).is_none());
        }
        let docker = Phase::Failed {
            error: SpawnError::DockerDown("refused".into()),
            at: Instant::now() - Duration::from_secs(3),
        };
        assert!(matches!(
            next(&docker, &Event::Kick { app_failures: 1 }),
            Some(Phase::Starting)
        ));
        assert!(matches!(
            next(&parse("failed(app, back-off over)"), &event("kick")),
            Some(Phase::Starting)
        ));
    }

    #[test]
    fn apply_reports_changes_and_wakes_waiters() {
        let cell = PhaseCell::new(Phase::Unknown);
        let mut rx = cell.subscribe();
        rx.borrow_and_update();
        assert!(!cell.apply(Event::Answered));
        assert!(!rx.has_changed().unwrap());
        assert!(cell.apply(Event::Kick { app_failures: 0 }));
        assert!(rx.has_changed().unwrap());
        assert!(matches!(cell.get(), Phase::Starting));
    }
}
