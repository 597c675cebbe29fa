//! Several spawngate replicas on one PostgreSQL store (issue 16), as real processes
//! (so a test can SIGKILL one) behind one real Traefik, on one Docker instance.
//!
//! The deployment of docs/ha.md: Traefik reaches the replicas through one address,
//! an entry point of its own (`internal`, on loopback) whose one router, from
//! Traefik's file provider, sends everything to a service with every replica as a
//! server, health-checked on `/readyz` every second and retried on a refused
//! connection. Every replica's `server.internal_url` is that entry point (the
//! forwardAuth address and the `spawngate` service the provider hands out), and
//! Traefik reads its HTTP provider there too: whichever replica answers.
//!
//! Besides Traefik, a test talks to each replica's own listen address, so both
//! are exercised for certain.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{
    Api, Backend, IMAGE, Traefik, docker_lines, free_port, http_client, login_with_link, poll,
    random_hex, wait_until,
};
use crate::postgres_setup::PgServer;
use crate::proc::ProcHarness;

const COOKIE: &str = "spawngate_session";
/// How long a revocation on one replica may take to reach another (the issue's
/// bound is well under a second; polls stop here).
const PROPAGATION_BOUND_SECS: u64 = 5;

/// Where the replicas' store lives.
pub enum Pg {
    /// A fresh database on the test process's shared server.
    Shared,
    /// A server of the test's own, to stop and start.
    Dedicated,
}

pub struct Replicas {
    /// Dropped first: nothing asks the replicas while they go.
    pub traefik: Traefik,
    pub nodes: Vec<ProcHarness>,
    /// Dropped after the replicas (a dedicated server).
    pub pg: Option<PgServer>,
    pub instance: String,
    /// Traefik's `web` entry point.
    pub public: String,
    pub client: reqwest::Client,
    /// The file provider's directory (the internal router and service).
    _traefik_dir: tempfile::TempDir,
}

impl Replicas {
    /// `n` replicas on one PostgreSQL database, `extra_env` for all of them.
    pub async fn start(n: usize, pg: Pg, extra_env: &[(&str, &str)]) -> Replicas {
        let (pg, store_url) = match pg {
            Pg::Shared => (None, PgServer::shared().fresh_database()),
            Pg::Dedicated => {
                let server = PgServer::dedicated();
                let url = server.fresh_database();
                (Some(server), url)
            }
        };
        let instance = format!("r{}", random_hex(5));
        let network = format!("sgtest-{instance}");
        let (web_port, api_port, internal_port) = (free_port(), free_port(), free_port());
        let public = format!("http://127.0.0.1:{web_port}");
        let internal = format!("http://127.0.0.1:{internal_port}");
        let mut env: Vec<(&str, &str)> = vec![
            ("SPAWNGATE_STORE_URL", &store_url),
            ("SPAWNGATE_SERVER_INTERNAL_URL", &internal),
            // Which replica leads, and when it changes.
            ("SPAWNGATE_LOG", "warn,spawngate::store=info"),
        ];
        env.extend_from_slice(extra_env);
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(
                ProcHarness::without_traefik(Backend::Docker, &instance, &network, &public, &env)
                    .await,
            );
        }
        let traefik_dir = tempfile::tempdir().unwrap();
        std::fs::write(
            traefik_dir.path().join("internal.yml"),
            internal_dynamic_config(nodes.iter().map(|n| n.direct.as_str())),
        )
        .unwrap();
        let args = vec![
            format!("--entrypoints.internal.address=127.0.0.1:{internal_port}"),
            format!(
                "--providers.file.directory={}",
                traefik_dir.path().display()
            ),
        ];
        let traefik = Traefik::start(web_port, api_port, &internal, None, &args).await;
        Replicas {
            traefik,
            nodes,
            pg,
            instance,
            public,
            client: http_client(),
            _traefik_dir: traefik_dir,
        }
    }

    /// Creates `name` through replica `i`; the slug, once Traefik routes it.
    pub async fn user(&self, i: usize, name: &str) -> String {
        let out = self.nodes[i].cli(&["user", "add", name]);
        let slug = crate::harness::slug_in(&String::from_utf8_lossy(&out.stdout));
        self.traefik.wait_router(&format!("u-{slug}")).await;
        slug
    }

    /// Signs `name` in at replica `i`'s own address (link minted by that replica's
    /// CLI): the `Cookie` value.
    pub async fn login_at(&self, i: usize, name: &str) -> String {
        let out = self.nodes[i].cli(&["user", "login-link", name]);
        let link = String::from_utf8_lossy(&out.stdout).into_owned();
        login_with_link(&self.client, &self.nodes[i].direct, &link, COOKIE).await
    }

    /// The admin API at replica `i`'s own address, with a token minted there.
    pub fn admin_at(&self, i: usize) -> Api {
        let out = self.nodes[i].cli(&["token"]);
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Api::new(&self.client, &self.nodes[i].direct, token)
    }

    /// forwardAuth at replica `i`'s own address for `slug` with `cookie`: the status.
    pub async fn auth_at(&self, i: usize, slug: &str, cookie: &str) -> Option<StatusCode> {
        self.client
            .get(format!("{}/auth/u-{slug}", self.nodes[i].direct))
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .ok()
            .map(|r| r.status())
    }

    /// GET `path` through Traefik with `cookie`: the status (None: no answer).
    pub async fn via_traefik(&self, path: &str, cookie: &str) -> Option<StatusCode> {
        self.client
            .get(format!("{}{path}", self.public))
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .ok()
            .map(|r| r.status())
    }

    /// Waits (bounded) until `slug`'s app answers 200 through Traefik.
    pub async fn until_app_answers(&self, slug: &str, cookie: &str, secs: u64) {
        let path = format!("/u-{slug}/");
        poll(
            secs,
            format!("{path} to answer 200 through Traefik"),
            || async {
                (self.via_traefik(&path, cookie).await == Some(StatusCode::OK)).then_some(())
            },
        )
        .await;
    }

    /// Replica `i`'s `/readyz`, or None when it does not answer.
    pub async fn readyz(&self, i: usize) -> Option<(StatusCode, Value)> {
        let resp = self
            .client
            .get(format!("{}/readyz", self.nodes[i].direct))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        Some((resp.status(), resp.json().await.unwrap_or(Value::Null)))
    }

    /// Waits (bounded) until exactly one running replica reports role=leader; its index.
    pub async fn leader(&self, secs: u64) -> usize {
        poll(secs, "exactly one replica to lead", || async {
            let mut leaders = Vec::new();
            for i in 0..self.nodes.len() {
                if !self.nodes[i].is_running() {
                    continue;
                }
                if let Some((StatusCode::OK, body)) = self.readyz(i).await
                    && body["role"] == "leader"
                {
                    leaders.push(i);
                }
            }
            (leaders.len() == 1).then(|| leaders[0])
        })
        .await
    }

    pub fn containers_of(&self, slug: &str) -> Vec<String> {
        crate::harness::containers_of(&self.instance, slug)
    }

    /// Whether `slug` has a running container.
    pub fn running(&self, slug: &str) -> bool {
        !crate::harness::running_containers_of(&self.instance, slug).is_empty()
    }
}

/// Traefik's dynamic configuration for the `internal` entry point: every replica
/// behind one service, health-checked on `/readyz`, a refused connection retried
/// on another replica.
pub fn internal_dynamic_config<'a>(replicas: impl Iterator<Item = &'a str>) -> String {
    let servers: String = replicas
        .map(|url| format!("          - url: \"{url}\"\n"))
        .collect();
    format!(
        "http:
  routers:
    spawngate-replicas:
      entryPoints: [\"internal\"]
      rule: \"PathPrefix(`/`)\"
      service: spawngate-replicas
      middlewares: [\"spawngate-replicas-retry\"]
  middlewares:
    spawngate-replicas-retry:
      retry:
        attempts: 3
        initialInterval: \"50ms\"
  services:
    spawngate-replicas:
      loadBalancer:
        passHostHeader: true
        servers:
{servers}        healthCheck:
          path: /readyz
          interval: \"1s\"
          timeout: \"1s\"
"
    )
}

/// Polls replica `i`'s forwardAuth with `cookie` until it refuses (401); how
/// long that took from `since`.
async fn until_refused(
    r: &Replicas,
    i: usize,
    slug: &str,
    cookie: &str,
    since: Instant,
) -> Duration {
    poll(
        PROPAGATION_BOUND_SECS,
        format!("replica {i} to refuse the revoked session"),
        || async {
            (r.auth_at(i, slug, cookie).await == Some(StatusCode::UNAUTHORIZED))
                .then(|| since.elapsed())
        },
    )
    .await
}

/// Polls until replica `i` lets `cookie` into `slug` (200: the container runs).
async fn until_allowed(r: &Replicas, i: usize, slug: &str, cookie: &str, secs: u64) {
    poll(
        secs,
        format!("replica {i} to let the session in"),
        || async { (r.auth_at(i, slug, cookie).await == Some(StatusCode::OK)).then_some(()) },
    )
    .await;
}

/// Signed in through A, the session works through B (its own address and
/// Traefik); revoked on A, B refuses it within the bound; the same for a
/// disabled user. The observed delays are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_one_replica_works_on_the_other_until_revoked_there() {
    let r = Replicas::start(
        2,
        Pg::Shared,
        &[("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false")],
    )
    .await;
    let alice = r.user(0, "alice").await;
    let cookie = r.login_at(0, "alice").await;
    // B knows the session at once (a miss with a valid signature catches up).
    until_allowed(&r, 1, &alice, &cookie, 60).await;
    until_allowed(&r, 0, &alice, &cookie, 10).await;
    r.until_app_answers(&alice, &cookie, 30).await;

    let admin_a = r.admin_at(0);
    let t0 = Instant::now();
    admin_a.post_ok("users/alice/sessions/revoke").await;
    let revoked = until_refused(&r, 1, &alice, &cookie, t0).await;
    assert_eq!(
        r.via_traefik(&format!("/u-{alice}/"), &cookie).await,
        Some(StatusCode::UNAUTHORIZED)
    );

    // Disabled on A: a session signed in on B ends on B.
    let cookie = r.login_at(1, "alice").await;
    until_allowed(&r, 1, &alice, &cookie, 10).await;
    until_allowed(&r, 0, &alice, &cookie, 10).await;
    let t0 = Instant::now();
    admin_a.post_ok("users/alice/disable").await;
    let disabled = until_refused(&r, 1, &alice, &cookie, t0).await;
    eprintln!(
        "replicas: revocation on A refused on B after {:.1} ms; disable after {:.1} ms \
         (bound {PROPAGATION_BOUND_SECS} s)",
        revoked.as_secs_f64() * 1000.0,
        disabled.as_secs_f64() * 1000.0
    );
}

/// The first spawns of a fresh deployment, one on each replica at once: both
/// start, on one Docker network of that name (Docker allows several networks
/// with one name, and then refuses to attach anything to "an ambiguous" one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_spawns_on_two_replicas_at_once_share_one_network() {
    let r = Replicas::start(
        2,
        Pg::Shared,
        &[("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false")],
    )
    .await;
    let (a, b) = (r.user(0, "alice").await, r.user(1, "bob").await);
    let (ca, cb) = (r.login_at(0, "alice").await, r.login_at(1, "bob").await);
    tokio::join!(r.auth_at(0, &a, &ca), r.auth_at(1, &b, &cb));
    let network = format!("sgtest-{}", r.instance);
    let networks = docker_lines(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name=^{network}$"),
    ]);
    assert_eq!(networks.len(), 1, "networks named {network}: {networks:?}");
    r.until_app_answers(&a, &ca, 60).await;
    r.until_app_answers(&b, &cb, 60).await;
}

/// 50 users' first requests, each sent at once to both replicas' own addresses
/// and through Traefik: exactly one container each. (The instance's network is
/// made first, by one user's start: see the test above for the race of making it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_first_requests_over_two_replicas_start_one_container_each() {
    let r = Replicas::start(
        2,
        Pg::Shared,
        &[
            ("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false"),
            // 51 sign-ins from 127.0.0.1: past the default budget of 30 an hour,
            // which is one for both replicas now.
            ("SPAWNGATE_LOGIN_PER_IP_PER_HOUR", "1000"),
        ],
    )
    .await;
    let first = r.user(0, "first").await;
    let cookie = r.login_at(0, "first").await;
    r.until_app_answers(&first, &cookie, 60).await;
    let mut users = Vec::new();
    for n in 0..50 {
        let name = format!("user{n:02}");
        let slug = r.user(n % 2, &name).await;
        let cookie = r.login_at((n + 1) % 2, &name).await;
        users.push((slug, cookie));
    }
    let r = &r;
    let firsts = users.iter().map(|(slug, cookie)| async move {
        let path = format!("/u-{slug}/");
        tokio::join!(
            r.auth_at(0, slug, cookie),
            r.auth_at(1, slug, cookie),
            r.via_traefik(&path, cookie)
        )
    });
    let answers = futures_util::future::join_all(firsts).await;
    for ((slug, _), answer) in users.iter().zip(&answers) {
        for status in [answer.0, answer.1, answer.2] {
            assert!(
                matches!(
                    status,
                    Some(StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE)
                ),
                "first request for {slug}: {status:?}"
            );
        }
    }
    // Until each app answers, only the documented "starting" 503 may come back.
    let mut errors = Vec::new();
    for (slug, cookie) in &users {
        let path = format!("/u-{slug}/");
        let seen = poll(
            120,
            format!("{path} to answer 200 through Traefik"),
            || async {
                let status = r.via_traefik(&path, cookie).await;
                match status {
                    Some(StatusCode::OK) => Some(None),
                    Some(StatusCode::SERVICE_UNAVAILABLE) => None,
                    other => Some(Some(other)),
                }
            },
        )
        .await;
        if let Some(status) = seen {
            errors.push(format!("{slug}: {status:?}"));
            r.until_app_answers(slug, cookie, 120).await;
        }
    }
    for (slug, _) in &users {
        assert_eq!(r.containers_of(slug).len(), 1, "containers of {slug}");
    }
    assert!(
        errors.is_empty(),
        "one container each, but {} users saw an error while their environment started \
         (two replicas starting it at once?): {errors:?}",
        errors.len()
    );
}

/// The leader is SIGKILLed while a signed-in user's requests flow through
/// Traefik: the other replica keeps serving them, takes the lead, culls an idle
/// container and removes an orphan (only it can: the old leader is gone), and
/// nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_traffic_hands_over_to_the_other_replica() {
    let mut r = Replicas::start(
        2,
        Pg::Shared,
        &[
            ("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false"),
            ("SPAWNGATE_LIFECYCLE_IDLE_TIMEOUT_SECS", "6"),
        ],
    )
    .await;
    let leader = r.leader(20).await;
    let survivor = 1 - leader;
    let alice = r.user(leader, "alice").await;
    let bob = r.user(survivor, "bob").await;
    let alice_cookie = r.login_at(leader, "alice").await;
    let bob_cookie = r.login_at(survivor, "bob").await;
    r.until_app_answers(&alice, &alice_cookie, 60).await;
    // Created on the leader just before it dies: not lost.
    r.user(leader, "carol").await;

    // Alice's requests, through Traefik, every 50 ms until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn({
        let (client, url, cookie, stop) = (
            r.client.clone(),
            format!("{}/u-{alice}/", r.public),
            alice_cookie.clone(),
            stop.clone(),
        );
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.is_cancelled() {
                let resp = client
                    .get(&url)
                    .header(reqwest::header::COOKIE, &cookie)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match resp.map(|r| r.status()) {
                    Ok(StatusCode::OK) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, failed)
        }
    });
    // Some requests before the kill.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed_at = Instant::now();
    r.nodes[leader].signal("KILL").await;
    // Left for a user that does not exist, after the old leader is gone.
    let orphan_slug = random_hex(6);
    let orphan = format!("spawngate-u-{orphan_slug}");
    let created = std::process::Command::new("docker")
        .args(["create", "--name", &orphan])
        .args(["--label", "spawngate.managed=true"])
        .args(["--label", &format!("spawngate.instance={}", r.instance)])
        .args(["--label", &format!("spawngate.slug={orphan_slug}")])
        .args(["--label", "spawngate.user_id=nobody"])
        .arg(IMAGE)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    let new_leader = r.leader(30).await;
    assert_eq!(new_leader, survivor);
    let took_lead = killed_at.elapsed();
    // Bob's container, started after the kill, is culled by the new leader.
    until_allowed(&r, survivor, &bob, &bob_cookie, 60).await;
    wait_until(60, "the new leader to cull bob's idle container", || {
        !r.running(&bob)
    })
    .await;
    let culled = killed_at.elapsed();
    wait_until(60, "the new leader to remove the orphan", || {
        r.containers_of(&orphan_slug).is_empty()
    })
    .await;

    // Alice kept being served all along.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let (ok, failed) = traffic.await.unwrap();
    eprintln!(
        "replicas: leader killed; {ok} requests served, {} failed {failed:?}; \
         the survivor led after {:.1} s and culled after {:.1} s",
        failed.len(),
        took_lead.as_secs_f64(),
        culled.as_secs_f64(),
    );
    assert!(ok > 20, "only {ok} requests served");
    assert!(
        failed.len() <= 3,
        "{} of alice's requests failed: {failed:?}",
        failed.len()
    );

    let admin = r.admin_at(survivor);
    assert!(
        admin.users().await.iter().any(|u| u["name"] == "carol"),
        "carol, created on the old leader, is lost"
    );
    for slug in [&alice, &bob] {
        assert_eq!(r.containers_of(slug).len(), 1, "containers of {slug}");
    }
}

/// PostgreSQL restarts under two replicas: they report it on /readyz, reconnect
/// and resync by themselves; a user created on A afterwards signs in and starts
/// through B, and a revocation still reaches the other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_out_a_postgres_restart() {
    let r = Replicas::start(
        2,
        Pg::Dedicated,
        &[("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false")],
    )
    .await;
    let alice = r.user(0, "alice").await;
    let cookie = r.login_at(0, "alice").await;
    until_allowed(&r, 1, &alice, &cookie, 60).await;

    let pg = r.pg.as_ref().unwrap();
    pg.stop();
    for i in 0..2 {
        poll(
            30,
            format!("replica {i}'s /readyz to report the store"),
            || async {
                r.readyz(i)
                    .await
                    .is_some_and(|(s, _)| s == StatusCode::SERVICE_UNAVAILABLE)
                    .then_some(())
            },
        )
        .await;
    }
    pg.start();
    let t0 = Instant::now();
    for i in 0..2 {
        poll(
            60,
            format!("replica {i}'s /readyz to be 200 again"),
            || async {
                r.readyz(i)
                    .await
                    .is_some_and(|(s, _)| s == StatusCode::OK)
                    .then_some(())
            },
        )
        .await;
    }
    eprintln!(
        "replicas: both ready {:.1} s after PostgreSQL was back",
        t0.elapsed().as_secs_f64()
    );
    r.leader(30).await;

    // A user created on A after the restart signs in and starts through B.
    let out = poll(30, "`user add dave` on A after the restart", || async {
        let out = r.nodes[0].cli_with(&[], &["user", "add", "dave"]);
        out.status.success().then_some(out)
    })
    .await;
    let dave = crate::harness::slug_in(&String::from_utf8_lossy(&out.stdout));
    r.traefik.wait_router(&format!("u-{dave}")).await;
    let dave_cookie = r.login_at(1, "dave").await;
    until_allowed(&r, 1, &dave, &dave_cookie, 60).await;
    r.until_app_answers(&dave, &dave_cookie, 60).await;
    // The old session too, on both; its revocation on B reaches A (the change
    // feed is followed again).
    until_allowed(&r, 0, &alice, &cookie, 30).await;
    until_allowed(&r, 1, &alice, &cookie, 30).await;
    let t0 = Instant::now();
    r.admin_at(1).post_ok("users/alice/sessions/revoke").await;
    let took = until_refused(&r, 0, &alice, &cookie, t0).await;
    eprintln!(
        "replicas: after the restart, a revocation on B reached A in {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
}

/// The per-address login budget is one across replicas: attempts alternating
/// between the two are refused once the budget is spent in total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rate_limits_are_shared_by_the_replicas() {
    const BUDGET: usize = 4;
    let budget = BUDGET.to_string();
    let r = Replicas::start(
        2,
        Pg::Shared,
        &[
            ("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false"),
            ("SPAWNGATE_LOGIN_PER_IP_PER_HOUR", &budget),
        ],
    )
    .await;
    let mut statuses = Vec::new();
    for attempt in 0..=BUDGET {
        let resp = r
            .client
            .post(format!("{}/_spawngate/login", r.nodes[attempt % 2].direct))
            .form(&[("token", "a-guess")])
            .send()
            .await
            .unwrap();
        statuses.push(resp.status());
    }
    assert!(
        statuses[..BUDGET]
            .iter()
            .all(|s| *s != StatusCode::TOO_MANY_REQUESTS),
        "refused within the budget: {statuses:?}"
    );
    if statuses[BUDGET] != StatusCode::TOO_MANY_REQUESTS {
        // Told on failure: whether each replica counts on its own.
        let mut more = 0;
        while more < 2 * BUDGET {
            more += 1;
            let resp = r
                .client
                .post(format!("{}/_spawngate/login", r.nodes[0].direct))
                .form(&[("token", "a-guess")])
                .send()
                .await
                .unwrap();
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                break;
            }
        }
        panic!(
            "attempt {} (alternating replicas) is past the shared budget of {BUDGET}, yet \
             answered {statuses:?}; replica A alone refused only after {more} more",
            BUDGET + 1
        );
    }
}

/// Subdomain mode: a hand-off code the login host issues on replica A is
/// redeemed for an app cookie on replica B, and only once (on either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_code_from_one_replica_is_redeemed_once_on_the_other() {
    // The public address only names hosts here: the test talks to each replica's
    // own port with these Host headers.
    const LOGIN_HOST: &str = "login.test:8000";
    let r = Replicas::start(
        2,
        Pg::Shared,
        &[
            ("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false"),
            ("SPAWNGATE_SERVER_PUBLIC_URL", "http://login.test:8000"),
            ("SPAWNGATE_SERVER_APPS_DOMAIN", "apps.test"),
        ],
    )
    .await;
    // `created user alice: http://<slug>.apps.test:8000`
    let out = r.nodes[0].cli(&["user", "add", "alice"]);
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let alice = out
        .split("//")
        .nth(1)
        .and_then(|rest| rest.split(".apps.test").next())
        .unwrap_or_else(|| panic!("no app host in {out:?}"))
        .to_owned();
    r.traefik.wait_router(&format!("u-{alice}")).await;
    let cookie = r.login_at(0, "alice").await;
    let app_host = format!("{alice}.apps.test:8000");
    // A code from replica `i`: the redemption's path on the app host.
    let issue_at = |i: usize| {
        let (r, cookie, alice, app_host) = (&r, &cookie, &alice, &app_host);
        async move {
            let issued = r
                .client
                .get(format!(
                    "{}/_spawngate/handoff?slug={alice}&next=%2F",
                    r.nodes[i].direct
                ))
                .header(reqwest::header::HOST, LOGIN_HOST)
                .header(reqwest::header::COOKIE, cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(issued.status(), StatusCode::FOUND);
            let redeem = issued.headers()["location"].to_str().unwrap().to_owned();
            redeem
                .strip_prefix(&format!("http://{app_host}"))
                .unwrap_or_else(|| panic!("not a redemption on {app_host}: {redeem}"))
                .to_owned()
        }
    };
    let redeem_at = |i: usize, path: &str| {
        r.client
            .get(format!("{}{path}", r.nodes[i].direct))
            .header(reqwest::header::HOST, &app_host)
            .send()
    };
    let path = issue_at(0).await;
    let redeemed = redeem_at(1, &path).await.unwrap();
    if redeemed.status() != StatusCode::SEE_OTHER {
        // Told on failure: whether the code works on the replica that issued it.
        let again = issue_at(0).await;
        let same = redeem_at(0, &again).await.unwrap().status();
        panic!(
            "a code issued on A and redeemed on B: {} (not 303); a code redeemed on A \
             itself: {same}",
            redeemed.status()
        );
    }
    assert!(
        crate::harness::session_cookie(redeemed.headers(), "spawngate_app").is_some(),
        "an app cookie"
    );
    for i in [0, 1] {
        assert_eq!(
            redeem_at(i, &path).await.unwrap().status(),
            StatusCode::BAD_REQUEST,
            "the code again, on replica {i}"
        );
    }
}
