//! The production-style deployment: `docker-compose up` with the local Traefik
//! override serves a user end to end (spawngate in network mode, FROM scratch).

use std::process::{Command, Output, Stdio};

use reqwest::header::COOKIE;

use crate::harness::{
    Later, cleanup_docker, free_port, poll, random_hex, repo_root, session_cookie, wait_until,
};

/// The main deployment: the compose file and its local-Traefik override.
const MAIN: &[&str] = &["docker-compose.yml", "examples/compose.local.yml"];
/// Two replicas on PostgreSQL (issue 16).
const HA: &[&str] = &["examples/ha/docker-compose.yml"];

struct Project {
    name: String,
    env: Vec<(String, String)>,
    /// Compose files, relative to the repository.
    files: &'static [&'static str],
    /// The spawngate service [`Project::exec`] runs the CLI in.
    service: &'static str,
}

impl Project {
    fn compose(&self, args: &[&str]) -> Output {
        let files = self.files.iter().flat_map(|f| ["-f", f]);
        Command::new("docker-compose")
            .current_dir(repo_root())
            .args(files)
            .args(["-p", &self.name])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn exec(&self, args: &[&str]) -> String {
        self.exec_in(self.service, args)
    }

    /// The CLI in compose service `service`.
    fn exec_in(&self, service: &str, args: &[&str]) -> String {
        let mut full = vec!["exec", "-T", service, "/spawngate"];
        full.extend_from_slice(args);
        let out = self.compose(&full);
        assert!(
            out.status.success(),
            "{:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let instance = &self.name;
        // User containers are spawngate's, not compose's: remove them first so the
        // network can go.
        cleanup_docker(instance, &format!("{instance}-edge"));
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
        cleanup_docker(instance, &format!("{instance}-edge"));
    }
}

/// Brings a uniquely named deployment up and waits (bounded) until Traefik serves
/// spawngate's login page through the provider's routes.
async fn start_project(extra_env: &[(&str, &str)]) -> (Project, String, reqwest::Client) {
    start_deployment(MAIN, "spawngate", extra_env).await
}

/// [`start_project`] of compose `files`, whose CLI runs in `service`.
async fn start_deployment(
    files: &'static [&'static str],
    service: &'static str,
    extra_env: &[(&str, &str)],
) -> (Project, String, reqwest::Client) {
    let name = format!("sgc{}", random_hex(4));
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut env: Vec<(String, String)> = vec![
        ("SPAWNGATE_PROVIDER_TOKEN".into(), random_hex(16)),
        ("SPAWNGATE_HTTP_PORT".into(), port.to_string()),
        ("SPAWNGATE_PUBLIC_URL".into(), public.clone()),
        ("SPAWNGATE_EDGE_NETWORK".into(), format!("{name}-edge")),
        ("SPAWNGATE_INSTANCE".into(), name.clone()),
    ];
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let project = Project {
        env,
        name,
        files,
        service,
    };
    let up = project.compose(&["up", "-d", "--no-build"]);
    assert!(
        up.status.success(),
        "docker-compose up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let client = crate::harness::http_client();
    crate::harness::until_login_page(
        &client,
        &public,
        Later(|| format!("the deployment to come up: {}", logs(&project))),
    )
    .await;
    (project, public, client)
}

/// Adds a user with the CLI inside the spawngate container and logs them in through
/// Traefik with a fresh link; returns the slug and the `Cookie` value.
async fn add_and_login(
    project: &Project,
    client: &reqwest::Client,
    public: &str,
    name: &str,
) -> (String, String) {
    let added = project.exec(&["user", "add", name]);
    let slug = crate::harness::slug_in(&added);
    let link = project.exec(&["user", "login-link", name]);
    let cookie = crate::harness::login_with_link(client, public, &link, "spawngate_session").await;
    (slug, cookie)
}

/// Waits (bounded) until `url` answers 200 with `cookie`; returns the JSON.
async fn wait_for_app(
    project: &Project,
    client: &reqwest::Client,
    url: &str,
    cookie: &str,
) -> serde_json::Value {
    let what = Later(|| format!("{url} to answer 200: {}", logs(project)));
    poll(60, what, || async {
        // A connection error counts as "not yet": e.g. a kept-alive connection to a
        // Traefik container that was just recreated.
        let resp = client.get(url).header(COOKIE, cookie).send().await.ok()?;
        match resp.status() {
            reqwest::StatusCode::OK => Some(resp.json().await.unwrap()),
            _ => None,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compose_deployment_serves_a_user_end_to_end() {
    let (project, public, client) = start_project(&[]).await;

    let added = project.exec(&["user", "add", "alice"]);
    let slug = crate::harness::slug_in(&added);
    let link = project.exec(&["user", "login-link", "alice"]);
    assert!(
        link.starts_with(&format!("{public}/_spawngate/login?token=")),
        "{link}"
    );
    let token = link.split("token=").nth(1).unwrap();

    let login = client
        .post(format!("{public}/_spawngate/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = session_cookie(login.headers(), "spawngate_session").unwrap();

    // Until Traefik polls the new router, the catch-all asks to retry; then the
    // user's container answers.
    let url = format!("{public}/u-{slug}/whoami.json");
    let who = wait_for_app(&project, &client, &url, &cookie).await;
    assert_eq!(who["user"], "alice");
    assert_eq!(who["path"], "/whoami.json");
    assert_eq!(who["headers"]["x-spawngate-user"], "alice");

    // Bob too; then "alice's code" probes from inside her container's network.
    let (bob_slug, bob_cookie) = add_and_login(&project, &client, &public, "bob").await;
    let bob_url = format!("{public}/u-{bob_slug}/whoami.json");
    wait_for_app(&project, &client, &bob_url, &bob_cookie).await;
    let alice_container = format!("spawngate-u-{slug}");
    let bob_container = format!("spawngate-u-{bob_slug}");
    let ip_on = |container: &str, network: &str| {
        crate::proc::inspect(
            container,
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        )
    };
    let bob_ip = ip_on(&bob_container, &bob_container);
    let spawngate_id = project.compose(&["ps", "-q", "spawngate"]);
    let spawngate_id = String::from_utf8_lossy(&spawngate_id.stdout)
        .trim()
        .to_owned();
    let spawngate_on_alice = ip_on(&spawngate_id, &alice_container);
    let spawngate_on_edge = ip_on(&spawngate_id, &format!("{}-edge", project.name));
    assert!(!bob_ip.is_empty() && !spawngate_on_alice.is_empty() && !spawngate_on_edge.is_empty());
    let from_alice = |target: String| {
        Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                &format!("container:{alice_container}"),
            ])
            .args([
                "--entrypoint",
                "/spawngate-example-app",
                crate::harness::IMAGE,
                "--connect",
                &target,
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        from_alice("127.0.0.1:8080".into()),
        "control: alice reaches her own app"
    );
    assert!(
        !from_alice(format!("{bob_ip}:8080")),
        "alice reached bob's container"
    );
    assert!(
        !from_alice(format!("{spawngate_on_alice}:9090")),
        "alice reached spawngate on her network"
    );
    assert!(
        !from_alice(format!("{spawngate_on_edge}:9090")),
        "alice reached spawngate on the edge network"
    );

    // A recreated Traefik container (new id, no user networks) is re-attached to
    // every user network as it starts, so running users keep being served.
    let recreate = project.compose(&["up", "-d", "--no-build", "--force-recreate", "traefik"]);
    assert!(
        recreate.status.success(),
        "{}",
        String::from_utf8_lossy(&recreate.stderr)
    );
    wait_for_app(&project, &client, &url, &cookie).await;

    // `spawngate check` inside the container: store in use by the server, Docker
    // reachable through the mounted socket, user image present.
    let direct = project.compose(&["exec", "-T", "spawngate", "/spawngate", "check"]);
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stdout)
    );
}

fn logs(project: &Project) -> String {
    let out = project.compose(&["logs", "--tail", "30"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_hands_out_running_containers_and_refills() {
    let (project, public, client) = start_project(&[("SPAWNGATE_POOL_SIZE", "2")]).await;
    let pool_label = format!("label=spawngate.instance={}", project.name);
    let pool_members = || {
        crate::harness::docker_lines(&[
            "ps",
            "-q",
            "--filter",
            &pool_label,
            "--filter",
            "label=spawngate.pool=true",
        ])
    };
    let what = Later(|| format!("the pool to fill: {}", logs(&project)));
    wait_until(60, what, || pool_members().len() >= 2).await;
    let warm: Vec<String> = pool_members();

    let (slug, cookie) = add_and_login(&project, &client, &public, "alice").await;
    let who = wait_for_app(
        &project,
        &client,
        &format!("{public}/u-{slug}/whoami.json"),
        &cookie,
    )
    .await;
    // Identity comes from forwardAuth's headers; the pooled app was started before
    // alice existed, and its secret check passed (else 403).
    assert_eq!(who["headers"]["x-spawngate-user"], "alice");

    let name = format!("spawngate-u-{slug}");
    let id = crate::proc::inspect(&name, "{{.Id}}");
    assert!(
        warm.iter().any(|w| id.starts_with(w.as_str())),
        "alice got a pool container ({id} not in {warm:?})"
    );
    let what = Later(|| format!("the pool to refill: {}", logs(&project)));
    wait_until(60, what, || {
        let others = pool_members()
            .into_iter()
            .filter(|m| !id.starts_with(m.as_str()))
            .count();
        others >= 2
    })
    .await;
}

/// examples/ha: two replicas on PostgreSQL behind one Traefik (docs/ha.md). A user
/// added on one replica signs in with a link the other mints; with the first
/// replica SIGKILLed, Traefik reaches the second through the shared alias and
/// the user keeps being served, and a new user starts. The image must be a
/// build with the PostgreSQL store (scripts/setup; SGTEST_SPAWNGATE_IMAGE names
/// another tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_replica_deployment_survives_losing_a_replica() {
    let image =
        std::env::var("SGTEST_SPAWNGATE_IMAGE").unwrap_or_else(|_| "spawngate:local".into());
    let password = random_hex(12);
    let (project, public, client) = start_deployment(
        HA,
        "spawngate-1",
        &[
            ("SPAWNGATE_IMAGE", &image),
            ("SPAWNGATE_PG_PASSWORD", &password),
        ],
    )
    .await;
    let slug = crate::harness::slug_in(&project.exec_in("spawngate-1", &["user", "add", "alice"]));
    let link = project.exec_in("spawngate-2", &["user", "login-link", "alice"]);
    let cookie =
        crate::harness::login_with_link(&client, &public, &link, "spawngate_session").await;
    let url = format!("{public}/u-{slug}/whoami.json");
    let who = wait_for_app(&project, &client, &url, &cookie).await;
    assert_eq!(who["headers"]["x-spawngate-user"], "alice");

    let kill = project.compose(&["kill", "-s", "SIGKILL", "spawngate-1"]);
    assert!(
        kill.status.success(),
        "{}",
        String::from_utf8_lossy(&kill.stderr)
    );
    wait_for_app(&project, &client, &url, &cookie).await;
    let bob = crate::harness::slug_in(&project.exec_in("spawngate-2", &["user", "add", "bob"]));
    let link = project.exec_in("spawngate-2", &["user", "login-link", "bob"]);
    let bob_cookie =
        crate::harness::login_with_link(&client, &public, &link, "spawngate_session").await;
    let bob_url = format!("{public}/u-{bob}/whoami.json");
    let who = wait_for_app(&project, &client, &bob_url, &bob_cookie).await;
    assert_eq!(who["headers"]["x-spawngate-user"], "bob");
}
