//! spawngate: one container per user behind Traefik.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, `SPAWNGATE_*` overrides and defaults, validated into
//!   [`config::Config`] before any work starts.
//! - [`ids`]: newtypes for user ids, slugs, session ids and secrets.
//! - [`store`]: the embedded sled database (users, sessions, login tokens, admin
//!   tokens, container records) and the in-memory directory the hot path reads;
//!   [`store::backup`] writes it to one file and restores it.
//! - [`auth`]: session cookies (HS256 JWT), one-time login tokens, admin tokens and
//!   validation of `next` redirect targets.
//! - [`provider`]: renders Traefik's dynamic configuration from the directory,
//!   once per change.
//! - [`runtime`]: the container runtime trait and its Docker (bollard) implementation.
//! - [`lifecycle`]: single-flight lazy spawn, readiness probes, container state.
//! - [`http`]: request routing and handlers (forwardAuth, login, admin API, pages).
//! - [`mail`]: login links by email (SMTP); [`outbound`]: HTTPS calls to identity
//!   providers; [`sharing`]: access to another user's environment.
//! - [`traefik_api`]: what `spawngate check` reads from Traefik's API.
//! - [`linger`]: lingering close, so an early answer is not lost to a reset.
//! - [`server`]: the TCP and control-socket listeners with graceful shutdown.
//! - [`app`]: wires everything together; [`cli`]: the `spawngate` command.
//! - [`error`]: the domain error enum and its mapping to HTTP answers.
//! - [`headers`]: the identity headers containers receive, and their look-alikes.
//! - [`tasks`]: background work, tracked so shutdown drains it.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod environments;
pub mod error;
pub mod headers;
pub mod http;
pub mod ids;
pub mod lifecycle;
pub mod linger;
pub mod mail;
pub mod outbound;
pub mod provider;
pub mod runtime;
pub mod server;
pub mod sharing;
pub mod store;
pub mod tasks;
pub mod time;
pub mod traefik_api;

pub use app::App;
pub use config::Config;
