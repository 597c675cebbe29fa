//! `/metrics` as a real Prometheus (Debian's `prometheus`, or `PROMETHEUS_BIN`)
//! scrapes it: requests through Traefik move the counters Prometheus then reports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::Value;

use crate::harness::{Harness, Later, Options, free_port, http_client, personal_token, poll};

fn prometheus_bin() -> PathBuf {
    std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// A Prometheus process scraping one target every second, with its storage in a
/// throw-away directory.
struct Prometheus {
    child: Child,
    api: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (`host:port`), sending `token` as a bearer token if given.
    async fn start(target: &str, token: Option<&str>) -> Prometheus {
        let bin = prometheus_bin();
        assert!(
            bin.exists(),
            "Prometheus not found at {} (apt-get install prometheus, or set PROMETHEUS_BIN)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let authorization = match token {
            Some(t) => format!("    authorization:\n      type: Bearer\n      credentials: {t}\n"),
            None => String::new(),
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: spawngate\n{authorization}    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            api: format!("http://127.0.0.1:{port}"),
            client: http_client(),
            _dir: dir,
        };
        poll(30, "Prometheus to answer", || async {
            let resp = prometheus
                .client
                .get(format!("{}/-/ready", prometheus.api))
                .send()
                .await;
            resp.is_ok_and(|r| r.status() == 200).then_some(())
        })
        .await;
        prometheus
    }

    /// An instant query's samples as (labels, value).
    async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let resp = self
            .client
            .post(format!("{}/api/v1/query", self.api))
            .form(&[("query", promql)])
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The single value of `promql`, once there is one.
    async fn value(&self, promql: &str) -> Option<f64> {
        self.query(promql).await.first().map(|(_, v)| *v)
    }

    /// Waits (bounded) until `promql` has a value of at least `min`.
    async fn wait_at_least(&self, promql: &str, min: f64) {
        poll(
            30,
            Later(|| format!("Prometheus to report {promql} >= {min}")),
            || async move { self.value(promql).await.filter(|v| *v >= min) },
        )
        .await;
    }

    /// The scrape target's health as Prometheus last saw it (`up`, `lastError`).
    async fn target(&self) -> Option<(String, String)> {
        let resp = self
            .client
            .get(format!("{}/api/v1/targets", self.api))
            .send()
            .await
            .ok()?;
        let body: Value = resp.json().await.ok()?;
        let t = body["data"]["activeTargets"].get(0)?.clone();
        Some((
            t["health"].as_str()?.to_owned(),
            t["lastError"].as_str().unwrap_or_default().to_owned(),
        ))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn target_of(h: &Harness) -> String {
    h.direct.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_auth_decisions_and_a_spawn_move() {
    let h = Harness::start(Options::toml("[limits]\nmax_running = 10")).await;
    let alice = h.user("alice").await;
    h.user("bob").await;
    let alice_home = h.url(&format!("/u-{}/", alice.slug));

    // Traefik routes nothing of it: Prometheus reaches spawngate's own address.
    let through_traefik = h.client.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(through_traefik.status(), StatusCode::NOT_FOUND);

    let prom = Prometheus::start(&target_of(&h), None).await;
    poll(30, "Prometheus to scrape spawngate", || async {
        prom.value("up{job=\"spawngate\"}")
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    let before = |outcome: &'static str| {
        let prom = &prom;
        async move {
            prom.value(&format!(
                "spawngate_auth_requests_total{{outcome=\"{outcome}\"}}"
            ))
            .await
            .unwrap_or(0.0)
        }
    };
    let (no_session, forbidden, allow) = (
        before("no_session").await,
        before("forbidden").await,
        before("allow").await,
    );
    assert_eq!(
        prom.value("spawngate_spawn_duration_seconds_count{kind=\"create\"}")
            .await,
        Some(0.0),
        "exported before the first spawn"
    );

    // Three API clients without a session: 401 each.
    for _ in 0..3 {
        let resp = h.client.get(&alice_home).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // Bob is signed in but Alice's environment is not his: 403 twice.
    let bob = h.login("bob").await;
    for _ in 0..2 {
        let resp = h.get_with_cookie(&alice_home, &bob).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    // Alice opens hers: it is created and started.
    let alice_cookie = h.login("alice").await;
    let resp = h.get_when_started(&alice_home, &alice_cookie, 60).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Her script's personal token passes; a made-up one does not.
    let token = personal_token(&h.client, &h.public, &alice_cookie, "script").await;
    let resp = h
        .client
        .get(&alice_home)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = h
        .client
        .get(&alice_home)
        .bearer_auth("spawngate_made_up")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    prom.wait_at_least(
        "spawngate_auth_requests_total{outcome=\"no_session\"}",
        no_session + 3.0,
    )
    .await;
    prom.wait_at_least(
        "spawngate_auth_requests_total{outcome=\"forbidden\"}",
        forbidden + 2.0,
    )
    .await;
    prom.wait_at_least(
        "spawngate_auth_requests_total{outcome=\"allow\"}",
        allow + 1.0,
    )
    .await;
    prom.wait_at_least(
        "spawngate_spawn_duration_seconds_count{kind=\"create\"}",
        1.0,
    )
    .await;
    prom.wait_at_least("spawngate_login_attempts_total{method=\"link\"}", 2.0)
        .await;
    prom.wait_at_least("spawngate_login_attempts_total{method=\"token\"}", 2.0)
        .await;
    prom.wait_at_least("spawngate_login_failures_total{method=\"token\"}", 1.0)
        .await;
    prom.wait_at_least("spawngate_environments{state=\"ready\"}", 1.0)
        .await;
    prom.wait_at_least("spawngate_running_environments", 1.0)
        .await;
    prom.wait_at_least("spawngate_active_users", 1.0).await;
    prom.wait_at_least(
        "spawngate_runtime_operation_duration_seconds_count{operation=\"ensure_running\"}",
        1.0,
    )
    .await;
    // Every forwardAuth answer is in the latency histogram, most of them fast.
    prom.wait_at_least("spawngate_auth_duration_seconds_count", 6.0)
        .await;
    let fast = prom
        .value("spawngate_auth_duration_seconds_bucket{le=\"0.1\"}")
        .await
        .unwrap_or(0.0);
    assert!(fast >= 5.0, "401s and 403s answer within 100 ms: {fast}");

    prom.wait_at_least("spawngate_max_running_environments", 10.0)
        .await;
    dashboard_queries_are_valid(&h, &prom).await;

    // No series is labelled with a user or a slug.
    let all = prom.query("{job=\"spawngate\"}").await;
    assert!(all.len() > 50, "{} series", all.len());
    for (labels, _) in &all {
        let text = labels.to_string();
        assert!(
            !text.contains("alice") && !text.contains("bob") && !text.contains(&*alice.slug),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_metrics_need_it_and_prometheus_sends_it() {
    const TOKEN: &str = "metrics-token-0123456789abcdef";
    let h = Harness::start(Options {
        with_traefik: false,
        ..Options::toml(&format!("[metrics]\ntoken = \"{TOKEN}\""))
    })
    .await;
    let url = format!("{}/metrics", h.direct);

    let none = h.client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert!(
        none.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let wrong = h
        .client
        .get(&url)
        .header(AUTHORIZATION, "Bearer metrics-token-0123456789abcdeX")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let ok = h
        .client
        .get(&url)
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        ok.headers()[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = ok.text().await.unwrap();
    assert!(body.contains("\nspawngate_build_info{"), "{body}");
    assert!(body.contains("# TYPE spawngate_auth_duration_seconds histogram"));

    // The README's scrape config, with the token: Prometheus gets in.
    let prom = Prometheus::start(&target_of(&h), Some(TOKEN)).await;
    poll(
        30,
        "Prometheus to scrape spawngate with the token",
        || async {
            match prom.target().await {
                Some((health, _)) if health == "up" => Some(()),
                _ => None,
            }
        },
    )
    .await;
    // The target's health is reported before its first sample can be queried.
    prom.wait_at_least("up{job=\"spawngate\"}", 1.0).await;
    drop(prom);

    // Without the token Prometheus sees the 401.
    let prom = Prometheus::start(&target_of(&h), None).await;
    let error = poll(30, "Prometheus to fail the scrape", || async {
        match prom.target().await {
            Some((health, error)) if health == "down" => Some(error),
            _ => None,
        }
    })
    .await;
    assert!(error.contains("401"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let h = Harness::start(Options {
        with_traefik: false,
        ..Options::toml("[metrics]\nenabled = false")
    })
    .await;
    let resp = h
        .client
        .get(format!("{}/metrics", h.direct))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// Every query of the example Grafana dashboard parses in the real Prometheus, and
/// every metric it names is one spawngate exports.
async fn dashboard_queries_are_valid(h: &Harness, prom: &Prometheus) {
    let path = crate::harness::repo_root().join("examples/grafana/dashboards/spawngate.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exported = h
        .client
        .get(format!("{}/metrics", h.direct))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names = regex::Regex::new(r"spawngate_[a-z_]+").unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for name in names.find_iter(expr) {
                let name = name.as_str();
                assert!(
                    exported.contains(&format!("\n{name}")),
                    "{name} (panel {}) is not exported",
                    panel["title"]
                );
            }
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            // `query` asserts that Prometheus accepted it.
            prom.query(&promql).await;
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
}
