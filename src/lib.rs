//! spawngate: one container per user behind Traefik.
//!
//! # Layout
//!
//! Layers, top to bottom; a module only names modules below it (checked by
//! `tests/layers.rs`, which also checks that nothing below the top layer names
//! [`App`]).
//!
//! - **Entry points.** [`cli`]: the `spawngate` command; [`server`]: the TCP and
//!   control-socket listeners with graceful shutdown; [`http`]: request routing and
//!   handlers (forwardAuth, login, the user and admin APIs, the dashboard and the
//!   admin page, pages), with
//!   [`http::errors`], the one mapping of errors to JSON and HTML; [`app`]: wiring
//!   only, it builds the services and hands them to the entry points.
//! - **Services** (each owns its operations, validation and audit entries):
//!   [`accounts`]: users, credentials, sign-in links and provisioning from an
//!   identity provider's claims; [`environments`]: each user's environments
//!   (create, delete, profiles one may choose), addresses and start / stop on
//!   someone's behalf; [`sharing`]: grants on environments; [`auth`]: who is calling
//!   ([`auth::Identities`], with the verified-cookie cache of the hot path), session
//!   cookies, external JWTs, OIDC, one-time codes, rate limits; [`mail`]: login
//!   links by SMTP; [`provider`]: Traefik's dynamic configuration, rendered once per
//!   change; [`ssh`]: the SSH front door (key authentication, shells, commands,
//!   sftp and local forwarding inside the user's container, through the runtime).
//! - **Core.** [`lifecycle`]: single-flight lazy start, readiness probes, idle
//!   culling, warm pool, reconcile, the one phase state machine
//!   (`lifecycle/phase.rs`) and how far a start got (`lifecycle/progress.rs`); [`runtime`]: the backend boundary (backend-neutral
//!   `EnvironmentSpec`, typed states, capabilities) and its two implementations:
//!   Docker containers (`runtime/docker.rs`) and Swarm services (`runtime/swarm/`).
//! - **Foundations.** [`store`]: the embedded sled database or a shared PostgreSQL one
//!   (both under one key-value layer; replicas mirror PostgreSQL in memory and elect
//!   a leader through it), one file per tree, the
//!   in-memory directory the hot path reads (updated per change), and [`store::Env`],
//!   the handle every layer names an environment by; [`store::backup`] writes it to one
//!   file and restores it; [`config`]: one file per TOML section (`[profiles.*]` included), `SPAWNGATE_*`
//!   keys derived from the raw structs; [`error`]: the domain error (no HTTP in
//!   it); [`events`]: the operator event stream (user and environment events,
//!   numbered, replayable from memory); [`tasks`]: background work, tracked so shutdown drains it; [`headers`]:
//!   the identity headers containers receive and their look-alikes; [`linger`]:
//!   lingering close, so an early answer is not lost to a reset; [`outbound`]: HTTPS
//!   calls to identity providers; [`metrics`]: Prometheus counters and histograms
//!   the layers record into, and the gauges read at scrape time;
//!   [`traefik_api`]: what `spawngate check` reads from Traefik; [`control`]: the CLI's client for the control socket; [`ids`],
//!   [`time`]: newtypes and clocks.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod environments;
pub mod error;
pub mod events;
pub mod headers;
pub mod http;
pub mod ids;
pub mod lifecycle;
pub mod linger;
pub mod mail;
pub mod metrics;
pub mod outbound;
pub mod provider;
pub mod runtime;
pub mod server;
pub mod sharing;
pub mod ssh;
pub mod store;
pub mod tasks;
pub mod time;
pub mod traefik_api;

pub use app::App;
pub use config::Config;
