//! The `spawngate` command. Admin commands go to a running server over its control
//! socket when there is one, and otherwise open the store directly; both paths run
//! the same admin API handler, so they behave the same.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::{Value, json};

use crate::app::App;
use crate::config::Config;
use crate::http::{self, Peer};
use crate::server;
use crate::store::backup;

#[derive(Parser)]
#[command(
    name = "spawngate",
    version,
    about = "One container per user behind Traefik"
)]
pub struct Cli {
    /// TOML config file (optional: defaults and SPAWNGATE_* variables suffice).
    #[arg(long, short, env = "SPAWNGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (forwardAuth, Traefik provider, login, admin API).
    Serve,
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage users' environments (`limits.environments_per_user` > 1).
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// Create an admin API token (printed once; stored hashed).
    Token {
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// Check the configuration, the store and Docker.
    Check,
    /// Write the whole store (users, sessions, tokens, keys, audit log) to FILE, mode
    /// 0600. Consistent while `serve` runs (through its control socket) or offline.
    Backup {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Replace the store with the backup in FILE (offline only; the old store is
    /// kept as `<data_dir>/db.old-<time>`).
    Restore {
        file: PathBuf,
        /// Replace a store that is not empty.
        #[arg(long)]
        force: bool,
    },
    /// Move the store between backends.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy the configured store (the embedded one in `server.data_dir`, or
    /// `store.url`) into TO: an empty PostgreSQL database (`postgres://…`) or a
    /// directory for an embedded store. Offline only; the source is left as it is.
    Migrate {
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user with a fresh random slug.
    Add {
        name: String,
        #[arg(long)]
        email: Option<String>,
        /// An admin user: may use the admin page and API with their own session.
        #[arg(long)]
        admin: bool,
    },
    /// Change an existing user: `--admin true|false`, `--disabled true|false`,
    /// `--groups a,b` (for profiles' `groups`), `--profile P` (the default
    /// environment's; applies at its next start).
    Set {
        name: String,
        #[arg(long, value_name = "true|false")]
        admin: Option<bool>,
        /// A disable revokes every session, link and token of the user.
        #[arg(long, value_name = "true|false")]
        disabled: Option<bool>,
        /// Comma-separated; an empty value removes all groups.
        #[arg(long, value_name = "a,b")]
        groups: Option<String>,
        #[arg(long)]
        profile: Option<String>,
    },
    /// List users.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a user, their container, volume and sessions.
    Rm { name: String },
    /// Print a one-time login link (valid 15 minutes by default).
    LoginLink { name: String },
    /// Let GRANTEE open OWNER's environment (revoke with `unshare`).
    Share {
        owner: String,
        grantee: String,
        /// The container gets `X-Spawngate-Access: read-only` for GRANTEE's requests.
        #[arg(long)]
        read_only: bool,
    },
    /// Take GRANTEE's access to OWNER's environment away.
    Unshare { owner: String, grantee: String },
    /// A user's SSH public keys (for `ssh <user>@<host>` with `[ssh]` enabled).
    SshKey {
        #[command(subcommand)]
        command: SshKeyCommand,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    /// A user's environments with their profile, state and address.
    List { user: String },
    /// Give USER another environment NAME, of profile P (default: `default`).
    Add {
        user: String,
        name: String,
        #[arg(long)]
        profile: Option<String>,
    },
    /// Delete one of USER's environments with its container and data.
    Rm { user: String, name: String },
}

#[derive(Subcommand)]
enum SshKeyCommand {
    /// Register a public key: KEY is a `.pub` file or the key line itself
    /// (ed25519, ECDSA, or RSA of at least 3072 bits).
    Add {
        user: String,
        key: String,
        /// A label (default: the key's comment).
        #[arg(long)]
        name: Option<String>,
    },
    /// List a user's keys.
    List {
        user: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a key by its id or fingerprint (`SHA256:…`).
    Rm { user: String, key: String },
}

/// Entry point used by `main`: parses arguments, runs, prints errors once.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve);
    if serving {
        tune_malloc();
    }
    init_tracing(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's allocator raises its mmap threshold after every large free, so each
/// re-render of the provider document (~0.8 MB at 1,000 users) leaves its pages
/// behind in some arena. A fixed threshold, and handing freed pages back every
/// few seconds, keep the server's memory near what it holds (bench/ f., 1,000
/// users / 50 running: VmRSS 39 MiB before, 19 MiB with these).
///
/// The number of arenas stays glibc's (one per thread, up to 8 per core): with
/// fewer, worker threads share an arena and its lock, and on a hot path of a few
/// allocations per request that lock was a fifth of `/auth`'s throughput (bench/
/// a., 2 cores: 0.77x of the no-op with 2 arenas, 1.00x without the cap).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: mallopt only sets allocator parameters; called before the runtime
    // starts any thread.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        mallopt(M_TRIM_THRESHOLD, 128 * 1024);
    }
    // Free chunks inside an arena are returned only by malloc_trim. A plain
    // thread: it does no I/O and holds nothing, so the exit may cut it anywhere.
    let _ = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                // SAFETY: malloc_trim is thread-safe and only releases free memory.
                unsafe {
                    malloc_trim(0);
                }
            }
        });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPAWNGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("SPAWNGATE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::User { command } => user(config, command).await,
        Command::Env { command } => env(config, command).await,
        Command::Token { name } => {
            let v = admin_call(
                config,
                Method::POST,
                "/_spawngate/api/tokens",
                Some(json!({ "name": name })),
            )
            .await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Check => check(config).await,
        Command::Backup { file, force } => backup(config, &file, force).await,
        Command::Restore { file, force } => restore(config, &file, force).await,
        Command::Store {
            command: StoreCommand::Migrate { to },
        } => migrate(config, &to).await,
    }
}

async fn backup(config: Config, file: &std::path::Path, force: bool) -> anyhow::Result<()> {
    // Before asking the server for anything: the common mistake fails fast.
    if !force && file.exists() {
        bail!(
            "'{}' exists already (pass --force to replace it)",
            file.display()
        );
    }
    let socket = server::control_socket_path(&config.data_dir);
    let bytes = match crate::control::request(&socket, Method::GET, "/_spawngate/api/backup", None)
        .await?
    {
        Some((status, body)) if status.is_success() => body.to_vec(),
        Some((status, body)) => {
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            bail!(
                "the running spawngate cannot take a backup: {message} (HTTP {})",
                status.as_u16()
            );
        }
        None if config.store.url.is_some() => {
            // A shared store: read in one consistent snapshot of the database.
            let store = open_shared(&config).await?;
            backup::export(&store).await?
        }
        None => {
            // Offline: nothing else writes, so the snapshot is consistent as is.
            if !config.data_dir.join("db").exists() {
                bail!(
                    "no spawngate store in '{}' (server.data_dir)",
                    config.data_dir.display()
                );
            }
            let store = crate::store::Store::open(&config.data_dir)
                .context("cannot open spawngate's store")?;
            backup::export(&store).await?
        }
    };
    // Only a backup that restore would accept is written.
    let checked = backup::parse(&bytes).context("the backup taken does not read back")?;
    backup::write_file(file, &bytes, force)?;
    println!(
        "backed up {} users ({} records) to {}",
        checked.users(),
        checked.records(),
        file.display()
    );
    Ok(())
}

/// The configured shared (PostgreSQL) store.
async fn open_shared(config: &Config) -> anyhow::Result<crate::store::Store> {
    let url = config.store.url.as_deref().unwrap_or_default();
    crate::store::Store::connect(url).await.with_context(|| {
        format!(
            "cannot open the store at {}",
            crate::config::redacted_store_url(url)
        )
    })
}

async fn migrate(config: Config, to: &str) -> anyhow::Result<()> {
    let socket = server::control_socket_path(&config.data_dir);
    let source = match &config.store.url {
        Some(url) => {
            if url == to {
                bail!("the store is at {to} already");
            }
            open_shared(&config).await?
        }
        None => {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                bail!(
                    "a spawngate server is serving on '{}': stop it before migrating its store",
                    socket.display()
                );
            }
            if !config.data_dir.join("db").exists() {
                bail!(
                    "no spawngate store in '{}' (server.data_dir)",
                    config.data_dir.display()
                );
            }
            crate::store::Store::open(&config.data_dir).context("cannot open spawngate's store")?
        }
    };
    let checked = backup::parse(&backup::export(&source).await?)
        .context("the store's contents do not read back")?;
    let (done, target) = if to.starts_with("postgres://") || to.starts_with("postgresql://") {
        crate::config::RawStore { url: to.to_owned() }
            .validate()
            .context("--to")?;
        let target = crate::store::Store::connect(to)
            .await
            .with_context(|| format!("cannot open {}", crate::config::redacted_store_url(to)))?;
        let done = backup::import_shared(&target, &checked).await?;
        (
            done,
            format!("store.url = \"{}\"", crate::config::redacted_store_url(to)),
        )
    } else if to.contains("://") {
        bail!("--to {to:?}: a postgres:// URL or a directory");
    } else {
        let dir = std::path::Path::new(to);
        let done = backup::restore(dir, &checked, false).await?;
        (
            done,
            format!(
                "server.data_dir = \"{}\" and an empty store.url",
                dir.display()
            ),
        )
    };
    println!(
        "copied {} users ({} records); the source is unchanged. To use the copy, set {target} and start spawngate.",
        done.users, done.records
    );
    Ok(())
}

async fn restore(config: Config, file: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let socket = server::control_socket_path(&config.data_dir);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        bail!(
            "a spawngate server is serving on '{}': stop it before restoring (restore replaces the store it has open)",
            socket.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read '{}'", file.display()))?;
    let checked = backup::parse(&bytes)
        .with_context(|| format!("'{}' cannot be restored", file.display()))?;
    if config.store.url.is_some() {
        // A shared store is never replaced under replicas that may be running:
        // restore fills an empty one.
        if force {
            bail!(
                "--force cannot replace a shared (PostgreSQL) store: restore into an empty database"
            );
        }
        let store = open_shared(&config).await?;
        let done = backup::import_shared(&store, &checked).await?;
        println!(
            "restored {} users ({} records, backup of {}) into the PostgreSQL store",
            done.users,
            done.records,
            checked.created.as_deref().unwrap_or("unknown date"),
        );
        return Ok(());
    }
    let done = backup::restore(&config.data_dir, &checked, force).await?;
    println!(
        "restored {} users ({} records, backup of {}) into {}",
        done.users,
        done.records,
        checked.created.as_deref().unwrap_or("unknown date"),
        config.data_dir.display()
    );
    if let Some(kept) = done.kept {
        println!("the previous store is kept in {}", kept.display());
    }
    Ok(())
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    if !config.listen.ip().is_loopback() && config.provider_token.is_none() {
        tracing::warn!(
            listen = %config.listen,
            "listening beyond loopback without server.provider_token: anyone who reaches this port can read the Traefik configuration"
        );
    }
    if !config.listen.ip().is_loopback() && config.metrics.enabled && config.metrics.token.is_none()
    {
        // Counts only (no user names), so a note rather than a warning.
        tracing::info!(
            listen = %config.listen,
            "/metrics is open to anyone who reaches this port (set metrics.token to require one)"
        );
    }
    let mut listen = config.listen;
    if let Some(network) = &config.listen_network {
        // Bind only on the network Traefik shares with us: spawngate also joins
        // every user network (to probe containers), but listens on none of them.
        let runtime = crate::runtime::DockerRuntime::connect(&config.docker)?;
        let ip = runtime
            .own_address(network)
            .await
            .with_context(|| format!("cannot resolve server.listen_network '{network}'"))?;
        listen.set_ip(ip);
        // The SSH port too, when it names no address: spawngate also joins every
        // user network, and users' containers must not reach its ports there.
        if let Some(ssh) = config.ssh.as_mut()
            && ssh.listen.ip().is_unspecified()
        {
            ssh.listen.set_ip(ip);
        }
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let app = App::build(config).await.context("cannot start spawngate")?;
    server::run(app, listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

async fn user(config: Config, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { name, email, admin } => {
            let v = admin_call(
                config,
                Method::POST,
                "/_spawngate/api/users",
                Some(json!({ "name": name, "email": email, "admin": admin })),
            )
            .await?;
            println!(
                "created {}user {}: {}",
                if admin { "admin " } else { "" },
                v["name"].as_str().unwrap_or_default(),
                v["url"].as_str().unwrap_or_default()
            );
        }
        UserCommand::Set {
            name,
            admin,
            disabled,
            groups,
            profile,
        } => {
            if admin.is_none() && disabled.is_none() && groups.is_none() && profile.is_none() {
                bail!(
                    "nothing to change: pass --admin true|false, --disabled true|false, --groups or --profile"
                );
            }
            let mut patch = serde_json::Map::new();
            if let Some(groups) = groups {
                let list: Vec<&str> = groups
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .collect();
                patch.insert("groups".into(), json!(list));
            }
            if let Some(profile) = profile {
                patch.insert("profile".into(), profile.into());
            }
            if let Some(admin) = admin {
                patch.insert("admin".into(), admin.into());
            }
            if let Some(disabled) = disabled {
                patch.insert("disabled".into(), disabled.into());
            }
            let v = admin_call(
                config,
                Method::PATCH,
                &format!("/_spawngate/api/users/{name}"),
                Some(Value::Object(patch)),
            )
            .await?;
            println!(
                "user {}: admin {}, {}",
                v["name"].as_str().unwrap_or_default(),
                if v["admin"] == true { "yes" } else { "no" },
                if v["disabled"] == true {
                    "disabled"
                } else {
                    "enabled"
                }
            );
        }
        UserCommand::List { json } => {
            let v = admin_call(config, Method::GET, "/_spawngate/api/users", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v["users"])?);
            } else {
                println!(
                    "{:<24} {:<14} {:<6} {:<6} URL",
                    "NAME", "SLUG", "STATE", "ADMIN"
                );
                for u in v["users"].as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<14} {:<6} {:<6} {}",
                        u["name"].as_str().unwrap_or_default(),
                        u["slug"].as_str().unwrap_or_default(),
                        if u["disabled"].as_bool() == Some(true) {
                            "off"
                        } else {
                            "on"
                        },
                        if u["admin"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        u["url"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        UserCommand::Rm { name } => {
            admin_call(
                config,
                Method::DELETE,
                &format!("/_spawngate/api/users/{name}"),
                None,
            )
            .await?;
            println!("deleted user {name}");
        }
        UserCommand::LoginLink { name } => {
            let v = admin_call(
                config,
                Method::POST,
                &format!("/_spawngate/api/users/{name}/login-link"),
                None,
            )
            .await?;
            println!("{}", v["url"].as_str().unwrap_or_default());
        }
        UserCommand::Share {
            owner,
            grantee,
            read_only,
        } => {
            let one_origin = config.apps.is_none();
            admin_call(
                config,
                Method::PUT,
                &format!("/_spawngate/api/users/{owner}/shares/{grantee}"),
                Some(json!({ "read_only": read_only })),
            )
            .await?;
            let mode = if read_only { " (read-only)" } else { "" };
            println!("{grantee} can now open {owner}'s environment{mode}");
            if one_origin {
                eprintln!(
                    "note: without server.apps_domain every environment shares one origin, so code \
                     in {owner}'s environment can act as {grantee} in {grantee}'s own environment \
                     and on spawngate; share only trusted apps, or use subdomain mode (README)"
                );
            }
        }
        UserCommand::Unshare { owner, grantee } => {
            admin_call(
                config,
                Method::DELETE,
                &format!("/_spawngate/api/users/{owner}/shares/{grantee}"),
                None,
            )
            .await?;
            println!("{grantee} can no longer open {owner}'s environment");
        }
        UserCommand::SshKey { command } => ssh_key(config, command).await?,
    }
    Ok(())
}

async fn env(config: Config, command: EnvCommand) -> anyhow::Result<()> {
    match command {
        EnvCommand::List { user } => {
            let v = admin_call(
                config,
                Method::GET,
                &format!("/_spawngate/api/users/{user}/environments"),
                None,
            )
            .await?;
            println!("{:<16} {:<16} {:<11} URL", "NAME", "PROFILE", "STATE");
            for e in v["environments"].as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:<16} {:<11} {}",
                    e["environment"].as_str().unwrap_or_default(),
                    e["profile"].as_str().unwrap_or_default(),
                    e["state"].as_str().unwrap_or_default(),
                    e["url"].as_str().unwrap_or_default()
                );
            }
        }
        EnvCommand::Add {
            user,
            name,
            profile,
        } => {
            let v = admin_call(
                config,
                Method::POST,
                &format!("/_spawngate/api/users/{user}/environments"),
                Some(json!({ "name": name, "profile": profile })),
            )
            .await?;
            println!(
                "created environment {name} ({}) for {user}: {}",
                v["profile"].as_str().unwrap_or_default(),
                v["url"].as_str().unwrap_or_default()
            );
        }
        EnvCommand::Rm { user, name } => {
            admin_call(
                config,
                Method::DELETE,
                &format!("/_spawngate/api/users/{user}/environments/{name}"),
                None,
            )
            .await?;
            println!("deleted environment {name} of {user}");
        }
    }
    Ok(())
}

async fn ssh_key(config: Config, command: SshKeyCommand) -> anyhow::Result<()> {
    // Fingerprints hold `/`; the API decodes the segment.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b'/')
        .add(b'%')
        .add(b'?')
        .add(b'#')
        .add(b' ');
    let segment = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
    match command {
        SshKeyCommand::Add { user, key, name } => {
            // A path to a `.pub` file, or the key line itself.
            let line = if key.split_whitespace().count() < 2 {
                std::fs::read_to_string(&key).with_context(|| format!("cannot read '{key}'"))?
            } else {
                key
            };
            let v = admin_call(
                config,
                Method::POST,
                &format!("/_spawngate/api/users/{}/ssh-keys", segment(&user)),
                Some(json!({ "key": line.trim(), "name": name })),
            )
            .await?;
            println!(
                "added {} key {} ({}) for {user}",
                v["algorithm"].as_str().unwrap_or_default(),
                v["fingerprint"].as_str().unwrap_or_default(),
                v["id"].as_str().unwrap_or_default()
            );
        }
        SshKeyCommand::List { user, json } => {
            let v = admin_call(
                config,
                Method::GET,
                &format!("/_spawngate/api/users/{}/ssh-keys", segment(&user)),
                None,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v["ssh_keys"])?);
            } else {
                println!(
                    "{:<12} {:<20} {:<50} NAME",
                    "ID", "ALGORITHM", "FINGERPRINT"
                );
                for k in v["ssh_keys"].as_array().into_iter().flatten() {
                    println!(
                        "{:<12} {:<20} {:<50} {}",
                        k["id"].as_str().unwrap_or_default(),
                        k["algorithm"].as_str().unwrap_or_default(),
                        k["fingerprint"].as_str().unwrap_or_default(),
                        k["name"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        SshKeyCommand::Rm { user, key } => {
            admin_call(
                config,
                Method::DELETE,
                &format!(
                    "/_spawngate/api/users/{}/ssh-keys/{}",
                    segment(&user),
                    segment(&key)
                ),
                None,
            )
            .await?;
            println!("removed SSH key {key} of {user}");
        }
    }
    Ok(())
}

/// Runs one admin API request: over the control socket if a server runs, else
/// in-process against the store.
async fn admin_call(
    config: Config,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let socket = server::control_socket_path(&config.data_dir);
    let (status, bytes) =
        match crate::control::request(&socket, method.clone(), path, body.as_ref()).await? {
            Some(answer) => answer,
            None => {
                // Nothing may run on after this command exits: a container
                // pre-created in the background would be cut off half made (a
                // stray volume). It is created on the user's first visit instead.
                let mut config = config;
                config.lifecycle.precreate = false;
                let app = App::build(config)
                    .await
                    .context("cannot open spawngate's store")?;
                local_call(app, method, path, body).await?
            }
        };
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = value["error"]["message"]
            .as_str()
            .unwrap_or("request failed");
        bail!("{message} (HTTP {})", status.as_u16());
    }
    Ok(value)
}

/// How long an offline command waits for the work it started (a container
/// stop waits up to `docker.stop_timeout_secs`, at most 100 s).
const OFFLINE_DRAIN: std::time::Duration = std::time::Duration::from_secs(120);

async fn local_call(
    app: Arc<App>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let bytes = body
        .map(|b| serde_json::to_vec(&b))
        .transpose()?
        .unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::from(bytes)))?;
    let resp = match http::handle(app.clone(), req, Peer::Control).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    // Whatever the command set going (stopping a disabled user's container…)
    // finishes before the process exits.
    let unfinished = app.tasks.shutdown(OFFLINE_DRAIN).await;
    if unfinished > 0 {
        tracing::warn!(unfinished, "background work was cut off at exit");
    }
    app.store.flush().await?;
    Ok((status, body))
}

async fn check(config: Config) -> anyhow::Result<()> {
    println!(
        "config: ok (listen {}, public URL {}, mode {:?}, image {})",
        config.listen, config.public_url.origin, config.docker.mode, config.docker.image
    );
    let host_ports = config.docker.publishes_host_ports().then(|| {
        let (min, max) = config.docker.host_ports;
        (min, max, u32::from(max - min) + 1)
    });
    match host_ports {
        Some((min, max, ports)) => println!(
            "capacity: host mode holds at most {ports} users (one port each, for life, in \
             docker.host_port_min..docker.host_port_max = {min}-{max}, fewer if other programs \
             use some); network mode has no such limit"
        ),
        None => println!("capacity: network mode: no per-user port, no cap on users"),
    }
    let socket = server::control_socket_path(&config.data_dir);
    let mut failed = false;
    if let Some((status, body)) =
        crate::control::request(&socket, Method::GET, "/_spawngate/api/users", None).await?
    {
        println!(
            "store: in use by a running spawngate (control socket answers: HTTP {})",
            status.as_u16()
        );
        let _ = body;
    } else {
        let place = match &config.store.url {
            Some(url) => format!("PostgreSQL at {}", crate::config::redacted_store_url(url)),
            None => config.data_dir.display().to_string(),
        };
        match crate::store::Store::open_configured(config.store.url.as_deref(), &config.data_dir)
            .await
        {
            Ok(store) => {
                store.check()?;
                let users = store.snapshot().len();
                println!("store: ok ({users} users in {place})");
                if let Some((_, _, ports)) = host_ports {
                    let held = store.host_ports_held();
                    let left = ports.saturating_sub(u32::try_from(held).unwrap_or(u32::MAX));
                    println!(
                        "capacity: {held} of {ports} host ports held, room for {left} more users"
                    );
                }
            }
            Err(e) => {
                println!("store: FAILED: {e}");
                failed = true;
            }
        }
    }
    // The configured backend: in swarm mode, ping also checks for a manager.
    let runtime = crate::runtime::connect(&config)?;
    match runtime.ping().await {
        Ok(()) => match runtime.image_present(&config.docker.image).await {
            Ok(true) => println!("docker: ok (image {} present)", config.docker.image),
            Ok(false) => {
                println!(
                    "docker: FAILED: image {} not found (build it first)",
                    config.docker.image
                );
                failed = true;
            }
            Err(e) => {
                println!("docker: FAILED: {e}");
                failed = true;
            }
        },
        Err(e) => {
            println!("docker: FAILED: {e}");
            failed = true;
        }
    }
    match &config.ssh {
        None => println!("ssh: off (set ssh.enabled = true for `ssh <user>@<host>`)"),
        Some(ssh) => match crate::ssh::host_key_fingerprint(&ssh.host_key_file) {
            Ok(fingerprint) => println!(
                "ssh: ok (listen {}, host key {fingerprint} in {})",
                ssh.listen,
                ssh.host_key_file.display()
            ),
            Err(e) => {
                println!("ssh: FAILED: {e}");
                failed = true;
            }
        },
    }
    match crate::traefik_api::check(&config).await {
        None => println!(
            "traefik: not checked (set traefik.api_url to Traefik's API, e.g. http://127.0.0.1:8081)"
        ),
        Some(findings) => {
            for finding in findings {
                match finding {
                    crate::traefik_api::Finding::Ok(m) => println!("traefik: ok ({m})"),
                    crate::traefik_api::Finding::Warning(m) => println!("traefik: WARNING: {m}"),
                    crate::traefik_api::Finding::Failed(m) => {
                        println!("traefik: FAILED: {m}");
                        failed = true;
                    }
                }
            }
        }
    }
    if failed {
        bail!("check failed");
    }
    Ok(())
}
