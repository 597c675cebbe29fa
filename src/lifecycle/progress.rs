//! What a start is doing right now, for the people waiting on it: the step, a
//! percentage, a message and when the start began. Written by the spawn task at
//! each step (a handful of writes per start, none once ready); read by the
//! progress stream and the status API through a `watch`. The outcome (ready,
//! failed) is the [`super::Phase`]'s: this only says how far a start has got.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

/// A start's steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Asked for; waiting for a free start (`limits.max_concurrent_spawns`).
    Queued,
    /// Creating the container (and starting it).
    Creating,
    /// Starting (or resuming) an existing container.
    Starting,
    /// The container runs; waiting for the app to answer its port.
    Waiting,
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub step: Step,
    /// 0–100.
    pub percent: u8,
    pub message: String,
    /// When this start began (the request that asked for it).
    pub began: Instant,
    /// How long after `began` this step began.
    pub step_at: Duration,
}

impl Progress {
    fn new(step: Step, percent: u8, message: impl Into<String>, began: Instant) -> Progress {
        Progress {
            step,
            percent,
            message: message.into(),
            step_at: began.elapsed(),
            began,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }
}

/// How far the wait for the app has got, as a percentage: from 40 towards 95,
/// half-way after 10 s. Honest about not knowing how long an app takes, while
/// still moving.
pub fn waiting_percent(waited: Duration) -> u8 {
    let t = waited.as_secs_f64() / 10.0;
    (40.0 + 55.0 * (1.0 - 0.5f64.powf(t))).round().min(95.0) as u8
}

/// The latest progress of one environment's start.
pub struct ProgressCell(watch::Sender<Progress>);

impl Default for ProgressCell {
    fn default() -> Self {
        ProgressCell(watch::channel(Progress::new(Step::Queued, 0, "", Instant::now())).0)
    }
}

impl ProgressCell {
    /// A new start begins (queued until a start permit is free).
    pub fn begin(&self) {
        self.0.send_replace(Progress::new(
            Step::Queued,
            5,
            "Waiting for a free start",
            Instant::now(),
        ));
    }

    /// The start moves to `step`; `began` is kept.
    pub fn step(&self, step: Step, percent: u8, message: impl Into<String>) {
        let message = message.into();
        self.0.send_if_modified(|p| {
            let changed = p.step != step || p.percent != percent || p.message != message;
            if changed {
                let step_at = match p.step == step {
                    true => p.step_at,
                    false => p.began.elapsed(),
                };
                *p = Progress {
                    step_at,
                    ..Progress::new(step, percent, message, p.began)
                };
            }
            changed
        });
    }

    pub fn get(&self) -> Progress {
        self.0.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_moves_but_never_claims_done() {
        let at = |s| waiting_percent(Duration::from_secs(s));
        assert_eq!(at(0), 40);
        assert_eq!(at(10), 68);
        assert!(at(5) > at(0) && at(20) > at(10));
        assert_eq!(at(3600), 95);
    }

    #[test]
    fn steps_keep_the_start_time_and_skip_repeats() {
        let cell = ProgressCell::default();
        cell.begin();
        let began = cell.get().began;
        let mut rx = cell.subscribe();
        rx.borrow_and_update();
        cell.step(Step::Creating, 10, "Creating the container");
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        cell.step(Step::Creating, 10, "Creating the container");
        assert!(!rx.has_changed().unwrap());
        assert_eq!(cell.get().began, began);
        // A step's start is kept while only its percentage moves.
        let at = cell.get().step_at;
        std::thread::sleep(Duration::from_millis(5));
        cell.step(Step::Creating, 12, "Creating the container");
        assert_eq!(cell.get().step_at, at);
        cell.step(Step::Waiting, 40, "Waiting");
        assert!(cell.get().step_at > at);
    }
}
