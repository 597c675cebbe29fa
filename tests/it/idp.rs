//! Identities from elsewhere, against a real OIDC provider (oidc-provider-mock from
//! PyPI, served over HTTPS by `tests/support/oidc_idp.py`) and through real
//! Traefik: OIDC login, external JWTs from the provider's JWKS, key rotation, and
//! the forged and stale tokens that must all get 401.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{Harness, Options, free_port, get_json, repo_root, session_cookie};

struct Idp {
    child: Child,
    dir: tempfile::TempDir,
    issuer: String,
    client: reqwest::Client,
}

struct Keys {
    kid: String,
    private_pem: String,
    public_pem: String,
}

impl Idp {
    async fn start() -> Idp {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let python = repo_root().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} missing (run scripts/setup)",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/support/oidc_idp.py"))
            .arg(dir.path())
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // "ready" on stdout once it listens (bounded by a reader thread + timeout).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.trim() == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap();
        if ready.is_err() {
            let _ = child.kill();
            panic!("the OIDC provider did not start");
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in spawngate::outbound::read_ca_file(&dir.path().join("ca.pem")).unwrap() {
            roots.add(cert).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Idp {
            child,
            dir,
            issuer: format!("https://localhost:{port}"),
            client,
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// GET one of the provider's test-only routes (see `tests/support/oidc_idp.py`).
    async fn test_route(&self, route: &str) -> Value {
        let (status, v) = get_json(&self.client, &format!("{}/test/{route}", self.issuer)).await;
        assert_eq!(status, 200, "{route}: {v}");
        v
    }

    async fn keys(&self) -> Keys {
        let v = self.test_route("keys").await;
        Keys {
            kid: v["kid"].as_str().unwrap().to_owned(),
            private_pem: v["private_pem"].as_str().unwrap().to_owned(),
            public_pem: v["public_pem"].as_str().unwrap().to_owned(),
        }
    }

    /// How many times the provider has served its JWKS.
    async fn jwks_hits(&self) -> u64 {
        let v = self.test_route("jwks-hits").await;
        v["hits"].as_u64().expect("a hit count")
    }

    async fn rotate_key(&self) {
        let resp = self
            .client
            .post(format!("{}/test/rotate-key", self.issuer))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    async fn set_user(&self, sub: &str, claims: Value) {
        let resp = self
            .client
            .put(format!("{}/users/{sub}", self.issuer))
            .json(&claims)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
    }

    /// Signs in at the provider's authorization page as `sub` (what a user does in
    /// the browser) and returns where the provider sends the browser back.
    async fn authorize(&self, authorize_url: &str, sub: &str) -> String {
        let form = self.client.get(authorize_url).send().await.unwrap();
        assert_eq!(form.status(), 200, "the provider shows its sign-in form");
        let resp = self
            .client
            .post(authorize_url)
            .form(&[("sub", sub)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302, "the provider redirects back");
        location(&resp)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Starts an OIDC login through Traefik; returns the provider URL and the state
/// cookie the browser got.
async fn start_login(h: &Harness, next: &str) -> (String, String) {
    let path = if next.is_empty() {
        "/_spawngate/oidc/start".to_owned()
    } else {
        format!("/_spawngate/oidc/start?next={next}")
    };
    let resp = h.client.get(h.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let cookie = session_cookie(resp.headers(), "spawngate_oidc_state").expect("state cookie");
    (location(&resp), cookie)
}

async fn finish_login(
    h: &Harness,
    callback: &str,
    state_cookie: Option<&str>,
) -> reqwest::Response {
    // The provider redirects to the public URL: follow it through Traefik.
    assert!(
        callback.starts_with(&h.url("/_spawngate/oidc/callback?")),
        "{callback}"
    );
    let mut req = h.client.get(callback);
    if let Some(c) = state_cookie {
        req = req.header(reqwest::header::COOKIE, c);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_lands_on_the_users_container_and_follows_a_key_rotation() {
    let idp = Idp::start().await;
    let h = Harness::start(Options::toml(&format!(
            "[oidc]\nenabled = true\nissuer = \"{}\"\nclient_id = \"spawngate\"\nclient_secret = \"client-secret\"\nca_file = {:?}\nlabel = \"Sign in with TestIdP\"\njwks_cooldown_secs = 1\n",
            idp.issuer,
            idp.ca_file()
        )))
    .await;
    let alice = h
        .app
        .accounts
        .add_user("test", "alice", Some("alice@example.org"))
        .await
        .unwrap();
    h.wait_router(&format!("u-{}", alice.slug)).await;
    idp.set_user(
        "alice-sub",
        json!({"email": "alice@example.org", "email_verified": true}),
    )
    .await;

    let page = h
        .client
        .get(h.url("/_spawngate/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("/_spawngate/oidc/start") && page.contains("Sign in with TestIdP"),
        "{page}"
    );

    let next = format!("/u-{}/whoami.json", alice.slug);
    let (authorize_url, state_cookie) = start_login(&h, &next).await;
    let url = url::Url::parse(&authorize_url).unwrap();
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert!(authorize_url.starts_with(&format!("{}/oauth2/authorize?", idp.issuer)));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], "spawngate");
    assert!(q["nonce"].len() >= 32 && q["state"].len() >= 32);
    assert_eq!(q["redirect_uri"], h.url("/_spawngate/oidc/callback"));

    let callback = idp.authorize(&authorize_url, "alice-sub").await;
    // The callback fails without the browser's state cookie (login CSRF), with
    // the cookie of another login, and with a forged one...
    let stolen = finish_login(&h, &callback, None).await;
    assert_eq!(stolen.status(), 401);
    let (_, other_login) = start_login(&h, &next).await;
    let foreign = finish_login(&h, &callback, Some(&other_login)).await;
    assert_eq!(foreign.status(), 401);
    let mut forged = state_cookie.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let forged = finish_login(&h, &callback, Some(&forged)).await;
    assert_eq!(forged.status(), 401);
    // ...and works in the browser that started it, once (the code is spent).
    let done = finish_login(&h, &callback, Some(&state_cookie)).await;
    assert_eq!(done.status(), 303);
    let replay = finish_login(&h, &callback, Some(&state_cookie)).await;
    assert_eq!(replay.status(), 401);
    assert_eq!(location(&done), next);
    let cookie = session_cookie(done.headers(), h.cookie_name()).expect("a session cookie");
    let who = h.get_with_cookie(h.url(&next), &cookie).await;
    assert_eq!(who.status(), 200);
    assert_eq!(who.json::<Value>().await.unwrap()["user"], "alice");
    assert_eq!(idp.jwks_hits().await, 1);

    // The provider rotates its signing key: the next login's ID token has an
    // unknown kid, spawngate refetches the JWKS and the login works.
    idp.rotate_key().await;
    // (Past the 1 s refetch cooldown since the first fetch.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (authorize_url, state_cookie) = start_login(&h, &next).await;
    let callback = idp.authorize(&authorize_url, "alice-sub").await;
    let done = finish_login(&h, &callback, Some(&state_cookie)).await;
    assert_eq!(done.status(), 303, "login after a key rotation");
    assert_eq!(idp.jwks_hits().await, 2);

    // Someone the provider knows but spawngate does not (auto-create is off).
    idp.set_user(
        "eve-sub",
        json!({"email": "eve@example.org", "email_verified": true}),
    )
    .await;
    let (authorize_url, state_cookie) = start_login(&h, "/").await;
    let callback = idp.authorize(&authorize_url, "eve-sub").await;
    let refused = finish_login(&h, &callback, Some(&state_cookie)).await;
    assert_eq!(refused.status(), 403);
    assert!(session_cookie(refused.headers(), h.cookie_name()).is_none());
    let admin = h.admin().await;
    assert_eq!(admin.user_with_email("eve@example.org").await, None);

    // An address the provider has not verified does not match an account.
    idp.set_user(
        "fake-alice",
        json!({"email": "alice@example.org", "email_verified": false}),
    )
    .await;
    let (authorize_url, state_cookie) = start_login(&h, "/").await;
    let callback = idp.authorize(&authorize_url, "fake-alice").await;
    assert_eq!(
        finish_login(&h, &callback, Some(&state_cookie))
            .await
            .status(),
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_can_create_accounts_on_first_login() {
    let idp = Idp::start().await;
    let h = Harness::start(Options::toml(&format!(
            "[oidc]\nenabled = true\nissuer = \"{}\"\nclient_id = \"spawngate\"\nclient_secret = \"client-secret\"\nca_file = {:?}\nauto_create = true\n",
            idp.issuer,
            idp.ca_file()
        )))
    .await;
    // No `email_verified` from an OIDC provider: the address is not vouched for.
    idp.set_user("dave-sub", json!({"email": "dave@example.org"}))
        .await;
    let (authorize_url, state_cookie) = start_login(&h, "").await;
    let callback = idp.authorize(&authorize_url, "dave-sub").await;
    let refused = finish_login(&h, &callback, Some(&state_cookie)).await;
    assert_eq!(refused.status(), 403);
    assert!(
        refused.text().await.unwrap().contains("did not confirm"),
        "the page says why"
    );
    let admin = h.admin().await;
    assert_eq!(admin.user_with_email("dave@example.org").await, None);

    idp.set_user(
        "carol-sub",
        json!({"email": "Carol@Example.org", "email_verified": true}),
    )
    .await;
    let (authorize_url, state_cookie) = start_login(&h, "").await;
    let callback = idp.authorize(&authorize_url, "carol-sub").await;
    let done = finish_login(&h, &callback, Some(&state_cookie)).await;
    assert_eq!(done.status(), 303);
    let carol = admin
        .user_with_email("carol@example.org")
        .await
        .expect("created");
    assert_eq!(carol["name"], "carol");
    let slug = carol["slug"].as_str().unwrap();
    // With no `next`, the user lands on their own environment.
    assert_eq!(location(&done), format!("/u-{slug}/"));
    h.wait_router(&format!("u-{slug}")).await;
    let cookie = session_cookie(done.headers(), h.cookie_name()).unwrap();
    let who = h
        .get_with_cookie(h.url(&format!("/u-{slug}/whoami.json")), &cookie)
        .await;
    assert_eq!(who.json::<Value>().await.unwrap()["user"], "carol");

    // A login the provider ends with an error: a page that says so, and the
    // browser's state cookie is cleared.
    let (authorize_url, state_cookie) = start_login(&h, "").await;
    let state = url::Url::parse(&authorize_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let denied = finish_login(
        &h,
        &h.url(&format!(
            "/_spawngate/oidc/callback?error=access_denied&state={state}"
        )),
        Some(&state_cookie),
    )
    .await;
    assert_eq!(denied.status(), 401);
    assert_eq!(
        session_cookie(denied.headers(), "spawngate_oidc_state").as_deref(),
        Some("spawngate_oidc_state=")
    );
    assert!(session_cookie(denied.headers(), h.cookie_name()).is_none());
}

fn sign(keys: &Keys, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(keys.private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn bearer_get(h: &Harness, url: &str, token: &str) -> reqwest::Response {
    h.client
        .get(url)
        .bearer_auth(token)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_jwts_pass_forward_auth_and_forged_or_stale_ones_get_401() {
    let idp = Idp::start().await;
    let cooldown = 2;
    let h = Harness::start(Options::toml(&format!(
            "[jwt]\nenabled = true\nalgorithms = [\"RS256\"]\njwks_url = \"{}/jwks\"\nissuer = \"{}\"\naudience = \"spawngate\"\nca_file = {:?}\njwks_cooldown_secs = {cooldown}\nleeway_secs = 5\ncookie = \"idp_token\"\n",
            idp.issuer,
            idp.issuer,
            idp.ca_file()
        )))
    .await;
    let alice = h
        .app
        .accounts
        .add_user("test", "alice", Some("alice@example.org"))
        .await
        .unwrap();
    h.wait_router(&format!("u-{}", alice.slug)).await;
    let url = h.url(&format!("/u-{}/whoami.json", alice.slug));
    let keys = idp.keys().await;
    let good = json!({
        "iss": idp.issuer, "aud": "spawngate", "email": "alice@example.org",
        "sub": "alice-sub", "exp": now() + 300, "iat": now(),
    });

    let token = sign(&keys, &keys.kid, &good);
    let resp = bearer_get(&h, &url, &token).await;
    assert_eq!(resp.status(), 200);
    let who: Value = resp.json().await.unwrap();
    assert_eq!(who["user"], "alice");
    assert!(
        who["headers"].get("authorization").is_none(),
        "the token spawngate accepted does not reach the container: {who}"
    );
    assert_eq!(idp.jwks_hits().await, 1);

    // Browsers can carry it in the configured cookie; it stays out of the container.
    let resp = h
        .client
        .get(&url)
        .header("Cookie", format!("idp_token={token}; theme=dark"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let who: Value = resp.json().await.unwrap();
    assert_eq!(who["headers"]["cookie"], "theme=dark");

    // Signed in by cookie while also carrying a JWT: the JWT still stays out, so
    // the owner of a shared environment never gets a grantee's token to replay.
    let cookie = h.login("alice").await;
    let resp = h
        .client
        .get(&url)
        .header("Cookie", &cookie)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let who: Value = resp.json().await.unwrap();
    assert!(who["headers"].get("authorization").is_none(), "{who}");

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let hs256_with_public_key = jsonwebtoken::encode(
        &{
            let mut hd = Header::new(Algorithm::HS256);
            hd.kid = Some(keys.kid.clone());
            hd
        },
        &good,
        &EncodingKey::from_secret(keys.public_pem.as_bytes()),
    )
    .unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": keys.kid})),
        b64(&good)
    );
    let bad = [
        ("alg none", alg_none),
        (
            "HS256 signed with the RSA public key",
            hs256_with_public_key,
        ),
        (
            "expired",
            sign(&keys, &keys.kid, &with("exp", json!(now() - 120))),
        ),
        (
            "wrong audience",
            sign(&keys, &keys.kid, &with("aud", json!("another-service"))),
        ),
        (
            "wrong issuer",
            sign(
                &keys,
                &keys.kid,
                &with("iss", json!("https://evil.example")),
            ),
        ),
        (
            "not yet valid",
            sign(&keys, &keys.kid, &with("nbf", json!(now() + 600))),
        ),
        (
            "unknown user",
            sign(
                &keys,
                &keys.kid,
                &with("email", json!("nobody@example.org")),
            ),
        ),
        ("tampered payload", {
            // Alice's valid signature over a payload that now names Bob.
            let t = sign(&keys, &keys.kid, &good);
            let parts: Vec<&str> = t.split('.').collect();
            let bob = b64(&with("email", json!("bob@example.org")));
            format!("{}.{bob}.{}", parts[0], parts[2])
        }),
        ("garbage", "not.a.jwt".to_owned()),
        ("oversized", format!("{}.{}.sig", "a".repeat(9000), "b")),
    ];
    for (what, token) in &bad {
        let resp = bearer_get(&h, &url, token).await;
        assert_eq!(resp.status(), 401, "{what}");
    }
    // A token in the query string is never read on the forwardAuth path.
    let resp = h
        .client
        .get(format!("{url}?access_token={token}&token={token}"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(idp.jwks_hits().await, 1, "none of these needed a refetch");

    // Key rotation: a token with the new kid makes spawngate refetch (once the
    // cooldown since the last fetch has passed) and is accepted.
    idp.rotate_key().await;
    let new_keys = idp.keys().await;
    assert_ne!(new_keys.kid, keys.kid);
    tokio::time::sleep(Duration::from_secs(cooldown + 1)).await;
    let resp = bearer_get(&h, &url, &sign(&new_keys, &new_keys.kid, &good)).await;
    assert_eq!(resp.status(), 200, "a token signed with the rotated key");
    assert_eq!(idp.jwks_hits().await, 2);

    // A flood of tokens with random kids: all refused, and at most one JWKS fetch
    // per cooldown period however many arrive.
    let before = idp.jwks_hits().await;
    let started = Instant::now();
    for i in 0..40 {
        let token = sign(&new_keys, &format!("random-kid-{i}"), &good);
        assert_eq!(bearer_get(&h, &url, &token).await.status(), 401);
    }
    let periods = started.elapsed().as_secs() / cooldown + 1;
    let fetched = idp.jwks_hits().await - before;
    assert!(
        fetched <= periods,
        "{fetched} JWKS fetches for 40 unknown kids in {periods} cooldown periods"
    );
}
