//! Traefik's dynamic configuration, rendered from the user directory.
//!
//! Per user: a router whose rule cannot match another slug's prefix, a forwardAuth
//! middleware with the slug bound in its address, a stripPrefix middleware and a
//! service at the address the runtime gives (deterministic). Nothing here depends
//! on whether a container runs, so starting one never changes what Traefik reads.
//! The document is rendered once per directory change; polls get the cached bytes.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::runtime::{EnvId, Runtime};
use crate::store::{Directory, Env};

/// Headers forwardAuth copies from spawngate's answer into the request. Traefik
/// deletes each of them from the client's request first, so a client can never
/// forge them, and `Cookie` is how the session cookie is kept from user containers.
pub const AUTH_RESPONSE_HEADERS: &[&str] = &[
    "X-Spawngate-User",
    "X-Spawngate-Slug",
    "X-Spawngate-Secret",
    "X-Spawngate-Access",
    "Cookie",
    "Authorization",
];

/// Name of the always-present routers, middlewares and service.
const SELF_SERVICE: &str = "spawngate";
/// The errors middleware every user router starts with.
const APP_GONE: &str = "spawngate-app-gone";
/// Path mode: headers taken off every app's answers (see where it is defined).
const APP_HEADERS: &str = "spawngate-app-headers";

pub fn render(config: &Config, directory: &Directory, runtime: &dyn Runtime) -> Value {
    let mut routers = Map::new();
    let mut middlewares = Map::new();
    let mut services = Map::new();
    let entry_points = json!(config.traefik.entry_points);

    let with_tls = |mut router: Value| {
        if let Some(resolver) = &config.traefik.cert_resolver {
            router["tls"] = json!({ "certResolver": resolver });
        }
        router
    };

    let own_pages = "PathPrefix(`/_spawngate/`) || Path(`/_spawngate`)";
    match &config.apps {
        None => {
            routers.insert(
                "spawngate".into(),
                with_tls(json!({
                    "rule": own_pages,
                    "entryPoints": entry_points,
                    "service": SELF_SERVICE,
                })),
            );
            // Unknown slugs land here (priority 1, below every user router) and get
            // the same answer as somebody else's slug.
            routers.insert(
                "spawngate-unknown-users".into(),
                with_tls(json!({
                    "rule": "PathPrefix(`/u-`)",
                    "priority": 1,
                    "entryPoints": entry_points,
                    "service": SELF_SERVICE,
                })),
            );
        }
        Some(apps) => {
            // Sign-in pages and APIs only on the login host: never on an app host,
            // where they would share an origin with user code.
            routers.insert(
                "spawngate".into(),
                with_tls(json!({
                    "rule": format!("Host(`{}`) && ({own_pages})", config.public_url.host),
                    "entryPoints": entry_points,
                    "service": SELF_SERVICE,
                })),
            );
            let app_hosts = format!(
                "HostRegexp(`^[0-9a-f]{{{}}}\\.{}$`)",
                crate::ids::Slug::LEN,
                apps.domain.replace('.', "\\.")
            );
            // On app hosts spawngate serves only the hand-off, its pages'
            // assets and the start-up page's progress and status, above the
            // user's app.
            routers.insert(
                "spawngate-handoff".into(),
                with_tls(json!({
                    "rule": format!("{app_hosts} && (Path(`/_spawngate/handoff`) || PathPrefix(`/_spawngate/assets/`) || Path(`/_spawngate/api/me/progress`) || Path(`/_spawngate/api/me/environment`))"),
                    "priority": 100_000,
                    "entryPoints": entry_points,
                    "service": SELF_SERVICE,
                })),
            );
            // App hosts without a user router: the same answer as another's slug.
            routers.insert(
                "spawngate-unknown-users".into(),
                with_tls(json!({
                    "rule": app_hosts,
                    "priority": 1,
                    "entryPoints": entry_points,
                    "service": SELF_SERVICE,
                })),
            );
        }
    }
    services.insert(
        SELF_SERVICE.into(),
        json!({ "loadBalancer": { "servers": [ { "url": config.internal_url } ], "passHostHeader": true } }),
    );

    let users = directory.users();
    // The page authenticates Traefik's call by the container secret; without it
    // spawngate could not tell a vanished container from an app's own 502.
    let app_gone = config.docker.inject_secret;
    if app_gone && !users.is_empty() {
        // A container that goes away while answering (killed, crashed) gives
        // Traefik a reset and the client a bare 502: ask spawngate for the answer
        // instead, as a 503 (its waiting page, or "the app answered 502").
        middlewares.insert(
            APP_GONE.into(),
            json!({ "errors": {
                "status": ["502"],
                "statusRewrites": { "502": 503 },
                "service": SELF_SERVICE,
                "query": "/_spawngate/app-gone",
            }}),
        );
    }
    if config.apps.is_none() && !users.is_empty() {
        // Every app shares one origin in path mode. `Service-Worker-Allowed: /`
        // would let an app register a service worker over the whole site,
        // spawngate's pages and other users' apps included; without the header a
        // worker's scope stays under the app's own `/u-<slug>/` path.
        middlewares.insert(
            APP_HEADERS.into(),
            json!({ "headers": { "customResponseHeaders": { "Service-Worker-Allowed": "" } } }),
        );
    }
    for env in users.iter().flat_map(Env::all_of) {
        render_environment(
            config,
            runtime,
            &env,
            &entry_points,
            &mut routers,
            &mut middlewares,
            &mut services,
            &with_tls,
        );
    }

    // Traefik rejects an empty section ("cannot be a standalone element").
    let mut http = Map::new();
    for (key, section) in [
        ("routers", routers),
        ("middlewares", middlewares),
        ("services", services),
    ] {
        if !section.is_empty() {
            http.insert(key.into(), Value::Object(section));
        }
    }
    json!({ "http": http })
}

#[allow(clippy::too_many_arguments)]
fn render_environment(
    config: &Config,
    runtime: &dyn Runtime,
    env: &Env,
    entry_points: &Value,
    routers: &mut Map<String, Value>,
    middlewares: &mut Map<String, Value>,
    services: &mut Map<String, Value>,
    with_tls: &dyn Fn(Value) -> Value,
) {
    let slug = env.slug();
    let profile = config.profiles.resolve(env.profile());
    let segment = slug.segment();
    let prefix = slug.base_path();
    let auth = format!("auth-{segment}");
    let strip = format!("strip-{segment}");
    let mut chain: Vec<&str> = Vec::with_capacity(4);
    if config.docker.inject_secret {
        chain.push(APP_GONE);
    }
    chain.push(&auth);
    let router = match &config.apps {
        // Its own origin: no prefix to strip.
        Some(apps) => json!({
            "rule": format!("Host(`{}`)", apps.host(slug)),
            "entryPoints": entry_points,
            "middlewares": chain,
            "service": segment,
        }),
        None => {
            chain.push(APP_HEADERS);
            // Apps told their base path get it unchanged.
            if profile.strip_prefix {
                chain.push(&strip);
            }
            json!({
                // `PathPrefix(/u-ab)` alone would also match `/u-abc`.
                "rule": format!("Path(`{prefix}`) || PathPrefix(`{prefix}/`)"),
                "entryPoints": entry_points,
                "middlewares": chain,
                "service": segment,
            })
        }
    };
    routers.insert(segment.clone(), with_tls(router));
    middlewares.insert(
        auth,
        json!({ "forwardAuth": {
            // The slug is bound here, never read from client-controlled headers.
            "address": format!("{}/auth/{segment}", config.internal_url),
            "trustForwardHeader": false,
            "preserveLocationHeader": true,
            "authResponseHeaders": AUTH_RESPONSE_HEADERS,
            // Look-alike names (`X_Spawngate_User`…) are deleted from the request too.
            "authResponseHeadersRegex": crate::headers::AUTH_RESPONSE_HEADERS_REGEX,
        }}),
    );
    if config.apps.is_none() && profile.strip_prefix {
        middlewares.insert(strip, json!({ "stripPrefix": { "prefixes": [prefix] } }));
    }
    let url = runtime.address(&EnvId::User(slug.clone()), env.host_port(), profile.port);
    services.insert(
        segment,
        json!({ "loadBalancer": { "servers": [ { "url": url } ], "passHostHeader": true } }),
    );
}

/// Keeps the rendered document current: re-renders when the directory changes.
pub struct Provider {
    rendered: watch::Receiver<Bytes>,
}

impl Provider {
    pub fn start(
        config: Arc<Config>,
        mut directory: watch::Receiver<Arc<Directory>>,
        runtime: Arc<dyn Runtime>,
        metrics: Arc<Metrics>,
    ) -> Provider {
        let render_now = move |directory: &Directory| {
            let began = std::time::Instant::now();
            let bytes = to_bytes(&render(&config, directory, runtime.as_ref()));
            metrics.provider_rendered(bytes.len(), began.elapsed());
            bytes
        };
        let first = render_now(&directory.borrow_and_update());
        let (tx, rx) = watch::channel(first);
        tokio::spawn(async move {
            // Ends when the store (sender) is dropped.
            while directory.changed().await.is_ok() {
                let doc = render_now(&directory.borrow_and_update());
                tx.send_replace(doc);
            }
        });
        Provider { rendered: rx }
    }

    /// The current document (a cheap `Bytes` clone).
    pub fn current(&self) -> Bytes {
        self.rendered.borrow().clone()
    }
}

fn to_bytes(doc: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(doc).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn render(config: &Config, directory: &Directory) -> Value {
        super::render(config, directory, runtime(config).as_ref())
    }

    /// The configured runtime: it connects on first use, and rendering never does.
    fn runtime(config: &Config) -> Arc<dyn Runtime> {
        crate::runtime::connect(config).unwrap()
    }

    #[tokio::test]
    async fn renders_isolated_routes_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources("[traefik]\ncert_resolver = \"le\"", Vec::new()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = store
            .create_user("alice", None, Some((31000, 31999)))
            .await
            .unwrap();
        let doc = render(&config, &store.snapshot());
        let http = &doc["http"];
        let seg = alice.slug.segment();

        let router = &http["routers"][&seg];
        assert_eq!(
            router["rule"],
            format!("Path(`/u-{0}`) || PathPrefix(`/u-{0}/`)", alice.slug)
        );
        assert_eq!(
            router["middlewares"],
            json!([
                "spawngate-app-gone",
                format!("auth-{seg}"),
                "spawngate-app-headers",
                format!("strip-{seg}")
            ])
        );
        assert_eq!(
            http["middlewares"]["spawngate-app-headers"]["headers"]["customResponseHeaders"]["Service-Worker-Allowed"],
            ""
        );
        assert_eq!(
            http["middlewares"]["spawngate-app-gone"]["errors"]["statusRewrites"]["502"],
            503
        );
        assert_eq!(router["tls"]["certResolver"], "le");

        let fa = &http["middlewares"][format!("auth-{seg}")]["forwardAuth"];
        assert_eq!(fa["address"], format!("http://127.0.0.1:9090/auth/{seg}"));
        assert_eq!(fa["trustForwardHeader"], false);
        assert_eq!(fa["preserveLocationHeader"], true);
        assert_eq!(
            fa["authResponseHeaders"],
            json!([
                "X-Spawngate-User",
                "X-Spawngate-Slug",
                "X-Spawngate-Secret",
                "X-Spawngate-Access",
                "Cookie",
                "Authorization"
            ])
        );
        assert_eq!(
            fa["authResponseHeadersRegex"],
            crate::headers::AUTH_RESPONSE_HEADERS_REGEX
        );
        assert_eq!(
            http["middlewares"][format!("strip-{seg}")]["stripPrefix"]["prefixes"],
            json!([format!("/u-{}", alice.slug)])
        );
        assert_eq!(
            http["services"][&seg]["loadBalancer"]["servers"][0]["url"],
            format!("http://127.0.0.1:{}", alice.host_port.unwrap())
        );
        assert_eq!(http["routers"]["spawngate-unknown-users"]["priority"], 1);
    }

    #[tokio::test]
    async fn network_mode_uses_container_dns_names() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources("[docker]\nmode = \"network\"", Vec::new()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bob = store.create_user("bob", None, None).await.unwrap();
        let doc = render(&config, &store.snapshot());
        assert_eq!(
            doc["http"]["services"][bob.slug.segment()]["loadBalancer"]["servers"][0]["url"],
            format!("http://spawngate-u-{}:8080", bob.slug)
        );
    }

    #[tokio::test]
    async fn empty_sections_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources("", Vec::new()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let doc = render(&config, &store.snapshot());
        assert!(doc["http"].get("middlewares").is_none());
        assert!(doc["http"]["routers"]["spawngate"].is_object());
    }

    #[tokio::test]
    async fn re_renders_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(Config::from_sources("", Vec::new()).unwrap());
        let store = Store::open(dir.path()).unwrap();
        let provider = Provider::start(
            config.clone(),
            store.directory(),
            runtime(&config),
            Default::default(),
        );
        let empty = provider.current();
        assert_eq!(
            provider.current().as_ptr(),
            empty.as_ptr(),
            "served from cache"
        );
        store.create_user("carol", None, None).await.unwrap();
        for _ in 0..1000 {
            if provider.current() != empty {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(String::from_utf8_lossy(&provider.current()).contains("auth-u-"));
    }

    #[tokio::test]
    async fn subdomain_mode_routes_by_host_without_stripping() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources(
            "[server]\npublic_url = \"https://login.example.com\"\napps_domain = \"apps.example.com\"",
            Vec::new(),
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = store.create_user("alice", None, None).await.unwrap();
        let doc = render(&config, &store.snapshot());
        let http = &doc["http"];
        let seg = alice.slug.segment();
        let router = &http["routers"][&seg];
        assert_eq!(
            router["rule"],
            format!("Host(`{}.apps.example.com`)", alice.slug)
        );
        assert_eq!(
            router["middlewares"],
            json!(["spawngate-app-gone", format!("auth-{seg}")])
        );
        assert!(http["middlewares"].get(format!("strip-{seg}")).is_none());
        assert_eq!(
            http["routers"]["spawngate"]["rule"],
            "Host(`login.example.com`) && (PathPrefix(`/_spawngate/`) || Path(`/_spawngate`))"
        );
        assert_eq!(
            http["routers"]["spawngate-handoff"]["rule"],
            "HostRegexp(`^[0-9a-f]{12}\\.apps\\.example\\.com$`) && (Path(`/_spawngate/handoff`) || PathPrefix(`/_spawngate/assets/`) || Path(`/_spawngate/api/me/progress`) || Path(`/_spawngate/api/me/environment`))"
        );
    }
}
