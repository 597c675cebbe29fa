//! Throw-away PostgreSQL servers for the tests of the PostgreSQL store: Debian's
//! `postgresql` package (the newest `/usr/lib/postgresql/*/bin`, or `PG_BIN`), a
//! fresh cluster in a temp dir, listening on 127.0.0.1 on a free port, trust auth.
//!
//! [`PgServer::shared`] is one server per test process, started on first use; each
//! test takes a database of its own from it ([`PgServer::fresh_database`]). A test
//! that stops or restarts PostgreSQL starts its own with [`PgServer::dedicated`] instead:
//! stopping the shared one would fail its neighbours.
//!
//! Nothing is left behind, even when a test panics or the process is killed: test
//! binaries never drop statics, so every server has a watchdog, a small `sh` in a
//! process group of its own (a Ctrl-C at the terminal does not reach it) that holds
//! the read end of a pipe whose write end only this process has. However the
//! process ends, the kernel closes that end; the watchdog then stops PostgreSQL
//! (immediate mode) and removes the temp dir. Dropping a [`PgServer`] closes it too.
//!
//! PostgreSQL refuses to run as root: as root, the cluster belongs to `nobody` and
//! initdb, postgres, pg_ctl and the watchdog run as that user.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::harness::{free_port, random_hex};

/// The user the cluster runs as when the tests run as root.
const UNPRIVILEGED: &str = "nobody";

/// Runs in the watchdog: waits for the test process's end of its stdin to close,
/// then stops the server and removes the directory. Every loop is bounded.
const WATCHDOG: &str = r#"
dir=$1 bin=$2
# Nothing is ever written: read returns at end of file, when the test process is gone.
while read -r _; do :; done
"$bin/pg_ctl" stop -D "$dir/data" -m immediate -w -t 10 >/dev/null 2>&1
pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)
[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
# A backend may outlive its postmaster for a moment and write a last file.
i=0
while [ -e "$dir" ] && [ $i -lt 10 ]; do
  rm -rf "$dir" 2>/dev/null || sleep 1
  i=$((i + 1))
done
"#;

pub struct PgServer {
    bin: PathBuf,
    /// The temp dir: `data/` (the cluster), the unix socket, `server.log`.
    dir: PathBuf,
    port: u16,
    /// uid and gid to run the server as (None: as this process's user).
    run_as: Option<(u32, u32)>,
    /// The shared server refuses [`PgServer::stop`].
    shared: bool,
    /// Held while starting or stopping; true while the server runs.
    running: Mutex<bool>,
    /// The test process's end of the watchdog's pipe: closing it ends the server.
    watchdog_pipe: Mutex<Option<ChildStdin>>,
    watchdog: Mutex<Option<Child>>,
}

static SHARED: OnceLock<PgServer> = OnceLock::new();

/// `PG_BIN`, or the newest `/usr/lib/postgresql/<version>/bin` with a `postgres`.
pub fn pg_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PG_BIN") {
        return PathBuf::from(bin);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max();
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL not found in /usr/lib/postgresql/*/bin \
             (apt-get install postgresql, or set PG_BIN)"
        ),
    }
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().unwrap();
    assert!(out.status.success(), "id {flag} {user}: no such user");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn show(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl PgServer {
    /// The server this test process shares, started on first use.
    pub fn shared() -> &'static PgServer {
        SHARED.get_or_init(|| PgServer::launch(true))
    }

    /// A server of this test's own (to stop and start), gone when dropped.
    pub fn dedicated() -> PgServer {
        PgServer::launch(false)
    }

    fn launch(shared: bool) -> PgServer {
        let bin = pg_bin();
        assert!(
            bin.join("initdb").exists(),
            "no initdb in {} (apt-get install postgresql, or set PG_BIN)",
            bin.display()
        );
        // The euid of this process, without a libc dependency.
        let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        let run_as = root.then(|| (id_of(UNPRIVILEGED, "-u"), id_of(UNPRIVILEGED, "-g")));
        let dir = tempfile::Builder::new()
            .prefix("spawngate-test-pg.")
            .tempdir()
            .unwrap()
            // Removed by the watchdog, which runs as the cluster's owner.
            .keep();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let mut server = PgServer {
            bin,
            dir,
            port: free_port(),
            run_as,
            shared,
            running: Mutex::new(false),
            watchdog_pipe: Mutex::new(None),
            watchdog: Mutex::new(None),
        };
        // First the watchdog: from here on the dir goes away with this process.
        let mut watchdog = server
            .command(Path::new("/bin/sh"))
            .arg("-c")
            .arg(WATCHDOG)
            .arg("spawngate-pg-watchdog")
            .arg(&server.dir)
            .arg(&server.bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        server.watchdog_pipe = Mutex::new(watchdog.stdin.take());
        server.watchdog = Mutex::new(Some(watchdog));

        let out = server
            .command(&server.bin.join("initdb"))
            .arg("--pgdata")
            .arg(server.data_dir())
            .args(["--username=postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--no-locale", "--no-sync", "--no-instructions"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed:\n{}", show(&out));
        let conf = format!(
            "\n# spawngate tests\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{dir}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 32MB\n\
             max_connections = 200\n",
            port = server.port,
            dir = server.dir.display(),
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(server.data_dir().join("postgresql.conf"))
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        server.start();
        server
    }

    /// A command run as the cluster's owner, with a clean PostgreSQL environment.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.dir)
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .env_remove("PGDATABASE")
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            // std drops the supplementary groups when root sets a uid.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        self.command(&self.bin.join("pg_ctl"))
            .arg("--pgdata")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The URL of database `db` (user `postgres`, no password: trust on loopback).
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates an empty database `test_<random>` and returns its URL.
    pub fn fresh_database(&self) -> String {
        let db = format!("test_{}", random_hex(6));
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        self.url_for(&db)
    }

    /// Runs `sql` in database `db` with `psql` over TCP; its output, unaligned and
    /// without headers (`SELECT 1` gives "1"). Panics when psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.try_psql(db, sql);
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed:\n{}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// [`PgServer::psql`] that hands back psql's output, failed or not.
    pub fn try_psql(&self, db: &str, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-d")
            .arg(self.url_for(db))
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts the server again, on the same port and data dir; returns once it
    /// accepts connections. Does nothing if it runs.
    pub fn start(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if *running {
            return;
        }
        let log = self.dir.join("server.log");
        let out = self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log.to_string_lossy()]);
        assert!(
            out.status.success(),
            "pg_ctl start failed:\n{}\nserver log:\n{}",
            show(&out),
            self.server_log()
        );
        *running = true;
    }

    /// Stops the server (fast shutdown: clients are disconnected, the cluster is
    /// left consistent); returns once it is gone. Not on the shared server.
    pub fn stop(&self) {
        assert!(
            !self.shared,
            "the shared PostgreSQL server cannot be stopped: other tests use it \
             (use a server of your own, PgServer::dedicated())"
        );
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if !*running {
            return;
        }
        let out = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
        assert!(out.status.success(), "pg_ctl stop failed:\n{}", show(&out));
        *running = false;
    }
}

impl Drop for PgServer {
    /// Closes the watchdog's pipe and waits (bounded) for it to clean up.
    fn drop(&mut self) {
        drop(
            self.watchdog_pipe
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let watchdog = self.watchdog.get_mut().unwrap_or_else(|p| p.into_inner());
        let Some(mut child) = watchdog.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Two fresh databases answer, keep their data over a restart (same port), and
/// the server and its directory are gone once it is dropped.
#[test]
fn fresh_databases_answer_and_survive_a_restart() {
    let server = PgServer::dedicated();
    let a = server.fresh_database();
    let b = server.fresh_database();
    assert_ne!(a, b);
    let db_a = a.rsplit('/').next().unwrap().to_owned();
    let db_b = b.rsplit('/').next().unwrap().to_owned();
    for db in [&db_a, &db_b] {
        assert_eq!(server.psql(db, "SELECT 1"), "1");
    }
    server.psql(
        &db_a,
        "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('a')",
    );

    server.stop();
    assert!(
        !server.try_psql(&db_a, "SELECT 1").status.success(),
        "psql still connects to a stopped server"
    );
    server.start();
    assert_eq!(server.url_for(&db_a), a, "the restart moved the server");
    for db in [&db_a, &db_b] {
        assert_eq!(server.psql(db, "SELECT 1"), "1");
    }
    assert_eq!(server.psql(&db_a, "SELECT v FROM kept"), "a");

    let dir = server.dir.clone();
    let pid_file = server.data_dir().join("postmaster.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_owned();
    drop(server);
    assert!(!dir.exists(), "{} is left behind", dir.display());
    // Gone, or a zombie its new parent has yet to reap.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.is_empty() || status.contains("\nState:\tZ"),
        "postgres (pid {pid}) is left running:\n{status}"
    );
}

/// The shared server is one per process and hands out distinct databases, also to
/// tests asking at the same time.
#[test]
fn the_shared_server_hands_out_databases() {
    let urls: Vec<String> = std::thread::scope(|s| {
        let asking: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PgServer::shared().fresh_database()))
            .collect();
        asking.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for url in &urls {
        assert!(url.starts_with(&PgServer::shared().url_for("test_")));
        let db = url.rsplit('/').next().unwrap();
        assert_eq!(PgServer::shared().psql(db, "SELECT current_database()"), db);
    }
    let mut distinct = urls.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), urls.len(), "{urls:?}");
}
