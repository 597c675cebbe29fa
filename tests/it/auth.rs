//! Login that a public site can trust, against real peers through Traefik: email
//! links through a real SMTP server (aiosmtpd), rate limits that forged
//! `X-Forwarded-For` headers cannot dodge, CSRF-protected logout, and admin
//! revocation.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION};
use serde_json::json;

use crate::harness::{Harness, Options, free_port, poll, repo_root, session_cookie, wait_until};

/// A real SMTP server (aiosmtpd from PyPI) writing every message to a Maildir.
struct Smtp {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Smtp {
    async fn start() -> Smtp {
        let bin = std::env::var_os("AIOSMTPD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".venv/bin/aiosmtpd"));
        assert!(
            bin.exists(),
            "aiosmtpd not found at {} (run scripts/setup)",
            bin.display()
        );
        let port = free_port();
        let maildir = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args([
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            // aiosmtpd makes the Maildir (tmp/, new/, cur/) itself.
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        poll(20, "aiosmtpd to start", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        Smtp {
            child,
            port,
            maildir,
        }
    }

    /// aiosmtpd behind `tests/support/smtp_server.py`: TLS (`starttls` or
    /// implicit `tls`) with a throwaway CA, and AUTH required.
    async fn start_secure(mode: &str, user: &str, password: &str) -> Smtp {
        let python = repo_root().join(".venv/bin/python");
        let port = free_port();
        let maildir = tempfile::tempdir().unwrap();
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/support/smtp_server.py"))
            .arg(maildir.path())
            .args([&port.to_string(), mode, user, password])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.trim() == "ready")
        });
        let ready = tokio::time::timeout(Duration::from_secs(30), ready).await;
        if !matches!(ready, Ok(Ok(true))) {
            let _ = child.kill();
            panic!("the TLS SMTP server did not start");
        }
        Smtp {
            child,
            port,
            maildir,
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.maildir.path().join("ca.pem")
    }

    fn messages(&self) -> Vec<String> {
        let dir = self.maildir.path().join("mail").join("new");
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (bounded) for a message to `to` and returns it.
    async fn wait_for(&self, to: &str) -> String {
        self.wait_for_new(to, &[]).await
    }

    /// Waits (bounded) for a message to `to` other than those in `seen`.
    async fn wait_for_new(&self, to: &str, seen: &[String]) -> String {
        let rcpt = format!("X-RcptTo: {to}");
        poll(20, &format!("a mail for {to}"), || {
            std::future::ready(
                self.messages()
                    .into_iter()
                    .find(|m| m.contains(&rcpt) && !seen.contains(m)),
            )
        })
        .await
    }
}

/// A TCP relay in front of the SMTP server that counts the connections spawngate
/// has opened and closed again, so a test can wait for a delivery attempt to be over
/// before it checks that nothing was delivered (instead of sleeping).
struct SmtpTap {
    port: u16,
    closed: Arc<AtomicUsize>,
    relay: tokio::task::JoinHandle<()>,
}

impl SmtpTap {
    async fn start(upstream: u16) -> SmtpTap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let closed = Arc::new(AtomicUsize::new(0));
        let relay = tokio::spawn({
            let closed = closed.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let closed = closed.clone();
                    tokio::spawn(async move {
                        if let Ok(server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            let (mut from_client, mut to_client) = client.into_split();
                            let (mut from_server, mut to_server) = server.into_split();
                            let back = tokio::spawn(async move {
                                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                            });
                            // Over once spawngate closes its end (a server stuck
                            // in a failed TLS handshake may never close its own).
                            let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                            back.abort();
                        }
                        closed.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        });
        SmtpTap {
            port,
            closed,
            relay,
        }
    }

    /// Waits (bounded) until `n` connections have come and gone.
    async fn wait_closed(&self, n: usize) {
        wait_until(30, "the SMTP attempt to end", || {
            self.closed.load(Ordering::SeqCst) >= n
        })
        .await;
    }
}

impl Drop for SmtpTap {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn link_in(mail: &str) -> String {
    // Undo quoted-printable: soft line breaks and the escaped '='.
    let mail = mail
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    mail.split_whitespace()
        .find(|w| w.contains("/_spawngate/login?token="))
        .expect("a login link in the mail")
        .to_owned()
}

/// A page with its login forms' random guard value blanked (the rest must match).
fn without_form_guard(page: &str) -> String {
    let marker = "name=\"form_guard\" value=\"";
    let mut parts = page.split(marker);
    let mut out = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        out.push_str(marker);
        out.push_str(part.split_once('"').map_or("", |(_, rest)| rest));
    }
    out
}

async fn with_email(smtp: &Smtp, extra: &str) -> Harness {
    Harness::start(Options::toml(&format!(
            "[email]\nenabled = true\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nfrom = \"spawngate <login@example.org>\"\n[lifecycle]\nstart_on_login = false\n{extra}",
            smtp.port
        )))
    .await
}

async fn request_link(h: &Harness, email: &str) -> (StatusCode, String) {
    let resp = h
        .client
        .post(h.url("/_spawngate/login"))
        .form(&[("email", email)])
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emailed_link_signs_in_once_and_lands_on_the_users_container() {
    let smtp = Smtp::start().await;
    let h = with_email(&smtp, "").await;
    let alice = h
        .app
        .accounts
        .add_user("test", "alice", Some("alice@example.org"))
        .await
        .unwrap();
    h.wait_router(&format!("u-{}", alice.slug)).await;

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
        page.contains("name=\"email\""),
        "the login page offers email sign-in"
    );

    let (status, known) = request_link(&h, "Alice@Example.org").await;
    assert_eq!(status, 200);
    let mail = smtp.wait_for("alice@example.org").await;
    assert!(
        mail.contains("From: spawngate <login@example.org>"),
        "{mail}"
    );
    let link = link_in(&mail);
    assert!(
        link.starts_with(&format!("{}/_spawngate/login?token=", h.public)),
        "{link}"
    );

    // Same answer for an address without an account, and no mail for it.
    let (status, unknown) = request_link(&h, "nobody@example.org").await;
    assert_eq!(status, 200);
    assert_eq!(
        unknown, known,
        "identical response whether or not the email exists"
    );

    let cookie =
        crate::harness::login_with_link(&h.client, &h.public, &link, h.cookie_name()).await;
    let who = h
        .get_with_cookie(h.url(&format!("/u-{}/whoami.json", alice.slug)), &cookie)
        .await;
    assert_eq!(who.status(), 200);
    assert_eq!(
        who.json::<serde_json::Value>().await.unwrap()["user"],
        "alice"
    );

    // The link is used up.
    let token = link.split("token=").nth(1).unwrap();
    let again = h
        .client
        .post(h.url("/_spawngate/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    // No mail for the unknown address: once a link asked for after it has
    // arrived, one for it (sent first) would have arrived too.
    let (status, _) = h
        .admin()
        .await
        .post(
            "users",
            Some(json!({ "name": "bob", "email": "bob@example.org" })),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(request_link(&h, "bob@example.org").await.0, 200);
    smtp.wait_for("bob@example.org").await;
    assert!(
        !smtp
            .messages()
            .iter()
            .any(|m| m.contains("nobody@example.org"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emailed_link_that_has_expired_is_refused() {
    let smtp = Smtp::start().await;
    let h = with_email(&smtp, "[login]\ntoken_ttl_secs = 1\n").await;
    h.app
        .accounts
        .add_user("test", "bob", Some("bob@example.org"))
        .await
        .unwrap();

    let (status, _) = request_link(&h, "bob@example.org").await;
    assert_eq!(status, 200);
    let link = link_in(&smtp.wait_for("bob@example.org").await);
    let token = link.split("token=").nth(1).unwrap().to_owned();
    // Stored expiry is in whole seconds: after 2.5 s the link is past it for sure.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let page = h.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 400);
    assert!(
        page.text().await.unwrap().contains("cannot be used"),
        "the confirm page says the link is no good"
    );
    let confirm = h
        .client
        .post(h.url("/_spawngate/login"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), 400);
    assert!(
        session_cookie(confirm.headers(), h.cookie_name()).is_none(),
        "no session for an expired link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_requests_are_rate_limited_per_email_and_per_real_client_address() {
    let smtp = Smtp::start().await;
    let h = with_email(
        &smtp,
        "[login]\nper_email_per_hour = 3\nper_ip_per_hour = 8\n",
    )
    .await;
    h.app
        .accounts
        .add_user("test", "bob", Some("bob@example.org"))
        .await
        .unwrap();

    for _ in 0..3 {
        assert_eq!(request_link(&h, "bob@example.org").await.0, 200);
    }
    let (status, known_limited) = request_link(&h, "bob@example.org").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Unknown addresses are limited the same way (nothing to tell them apart).
    for _ in 0..3 {
        assert_eq!(request_link(&h, "ghost@example.org").await.0, 200);
    }
    let (status, unknown_limited) = request_link(&h, "ghost@example.org").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(known_limited, unknown_limited);

    // 8 attempts from this address are used now; forging X-Forwarded-For (Traefik
    // replaces it; spawngate trusts it only from Traefik) does not help.
    let resp = h
        .client
        .post(h.url("/_spawngate/login"))
        .header("X-Forwarded-For", "203.0.113.7")
        .form(&[("email", "someone-else@example.org")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    // Token guessing counts against the same budget.
    let guess = h
        .client
        .post(h.url("/_spawngate/login"))
        .form(&[("token", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(guess.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_needs_the_csrf_token_and_revokes_the_session() {
    let h = Harness::start(Options::toml("[lifecycle]\nstart_on_login = false")).await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let app_url = h.url(&format!("/u-{}/", alice.slug));

    // A cross-site form (no token) does not sign anyone out.
    let cross_site: [&[(&str, &str)]; 3] = [
        &[],
        &[("Origin", "https://evil.example")],
        &[("Sec-Fetch-Site", "cross-site"), ("Origin", "null")],
    ];
    for headers in cross_site {
        let forged = headers
            .iter()
            .fold(h.client.post(h.url("/_spawngate/logout")), |req, (k, v)| {
                req.header(*k, *v)
            })
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{headers:?}");
    }
    assert_eq!(h.get_with_cookie(&app_url, &cookie).await.status(), 200);

    // The sign-out form on the home page carries it.
    let out = h.logout(&cookie).await;
    assert_eq!(
        out.headers()[LOCATION],
        "/_spawngate/login",
        "always a same-site path"
    );
    assert!(
        session_cookie(out.headers(), h.cookie_name()).is_some_and(|c| c.ends_with('=')),
        "cookie cleared"
    );
    assert_eq!(
        h.get_with_cookie(&app_url, &cookie).await.status(),
        401,
        "the old cookie no longer passes forwardAuth"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_or_revoking_sessions_cuts_access_at_once() {
    let h = Harness::start(Options::toml("[lifecycle]\nstart_on_login = false")).await;
    let admin = h.admin().await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let app_url = h.url(&format!("/u-{}/", alice.slug));
    let status = |c: &str| {
        let req = h.client.get(&app_url).header(COOKIE, c.to_owned());
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(status(&cookie).await, 200);
    // Credentials alice holds when the admin disables her: a personal API token and
    // a login link she has not used yet.
    let personal = crate::harness::personal_token(&h.client, &h.public, &cookie, "ci").await;
    let with_token = || {
        let req = h.client.get(&app_url).bearer_auth(&personal);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(with_token().await, 200);
    let (code, unused_link) = admin.post("users/alice/login-link", None).await;
    assert_eq!(code, 201, "{unused_link}");

    admin.post_ok("users/alice/disable").await;
    assert_eq!(
        status(&cookie).await,
        401,
        "disabled: every session is dead"
    );
    let (code, body) = admin.post("users/alice/login-link", None).await;
    assert_eq!(code, 400, "no login links for disabled users: {body}");
    // Nothing can reach the container any more: it is stopped, not left to idle.
    wait_until(30, "the disabled user's container to stop", || {
        h.running_containers_of(&alice.slug).is_empty()
    })
    .await;
    assert_eq!(
        h.containers_of(&alice.slug).len(),
        1,
        "stopped, not removed"
    );
    assert_eq!(with_token().await, 401, "disabled: API tokens are dead");
    admin.post_ok("users/alice/enable").await;
    // Enabling brings none of it back: the disable revoked every credential.
    assert_eq!(
        status(&cookie).await,
        401,
        "enabled again: the session from before the disable stays revoked"
    );
    assert_eq!(with_token().await, 401, "the API token stays revoked");
    let confirm = h
        .client
        .get(unused_link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        confirm.status(),
        400,
        "a login link from before the disable is void"
    );
    let audit = admin.get_ok("audit?limit=10").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "user.disable"
                && e["detail"] == "revoked 1 sessions, 1 login links, 1 API tokens"),
        "{audit}"
    );
    // Only a new sign-in works.
    let fresh = h.login("alice").await;
    assert_eq!(status(&fresh).await, 200);

    let second = h.login("alice").await;
    let revoked = admin.post_ok("users/alice/sessions/revoke").await;
    assert_eq!(revoked["revoked"], 2, "{revoked}");
    assert_eq!(status(&fresh).await, 401);
    assert_eq!(status(&second).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_redirects_only_ever_go_to_same_site_paths() {
    let h = Harness::start(Options::toml("[lifecycle]\nstart_on_login = false")).await;
    let alice = h.user("alice").await;
    for evil in [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "/%2Fevil.example",
        "javascript:alert(1)",
    ] {
        let link = h.app.accounts.login_link("alice").await.unwrap();
        let token = link.url.split("token=").nth(1).unwrap().to_owned();
        let resp = h
            .client
            .post(h.url("/_spawngate/login"))
            .form(&[("token", token.as_str()), ("next", evil)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            resp.headers()[LOCATION],
            format!("/u-{}/", alice.slug),
            "next={evil:?}"
        );
    }
    // A same-site target is honoured.
    let link = h.app.accounts.login_link("alice").await.unwrap();
    let token = link.url.split("token=").nth(1).unwrap().to_owned();
    let target = format!("/u-{}/notebooks?x=1", alice.slug);
    let resp = h
        .client
        .post(h.url("/_spawngate/login"))
        .form(&[("token", token.as_str()), ("next", target.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()[LOCATION], target.as_str());

    // Logout always lands on the sign-in page, whatever it is asked.
    let cookie = h.login("alice").await;
    let me = h.me(&cookie).await;
    let resp = h
        .client
        .post(h.url("/_spawngate/logout?next=https://evil.example/"))
        .header(COOKIE, &cookie)
        .form(&[
            ("csrf", me["csrf"].as_str().unwrap()),
            ("next", "//evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/_spawngate/login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_api_tokens_reach_only_their_owners_slug_and_never_the_container() {
    let h = Harness::start(Options::toml("[lifecycle]\nstart_on_login = false")).await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let cookie = h.login("alice").await;
    let me = h.me(&cookie).await;
    assert_eq!(me["name"], "alice");
    let csrf = me["csrf"].as_str().unwrap().to_owned();

    // Creating a token with the cookie needs the CSRF header.
    let forged = h
        .client
        .post(h.url("/_spawngate/api/me/tokens"))
        .header(COOKIE, &cookie)
        .json(&serde_json::json!({ "name": "ci" }))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let created: serde_json::Value = h
        .client
        .post(h.url("/_spawngate/api/me/tokens"))
        .header(COOKIE, &cookie)
        .header("X-Spawngate-CSRF", &csrf)
        .json(&serde_json::json!({ "name": "ci" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("spawngate_"));
    let api = h.api(&token);
    let listed = api.get_ok("me/tokens").await.to_string();
    assert!(
        listed.contains("\"ci\"") && !listed.contains(&token),
        "listed, never shown again: {listed}"
    );

    // The token reads the account but cannot change it: no new tokens, password
    // or shares from a token that might have leaked.
    let (mint, _) = api
        .post("me/tokens", Some(json!({ "name": "successor" })))
        .await;
    assert_eq!(mint, StatusCode::FORBIDDEN);
    let (password, _) = api
        .put("me/password", json!({ "new": "correct horse battery" }))
        .await;
    assert_eq!(password, StatusCode::FORBIDDEN);
    let (share, _) = api
        .put("me/shares/bob", json!({ "read_only": false }))
        .await;
    assert_eq!(share, StatusCode::FORBIDDEN);

    // A script with the token reaches alice's container; the token does not.
    let who: serde_json::Value = h
        .client
        .get(h.url(&format!("/u-{}/whoami.json", alice.slug)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["user"], "alice");
    assert!(who["headers"].get("authorization").is_none(), "{who}");
    // The app's own Authorization (not a spawngate token) passes through.
    let own: serde_json::Value = h
        .client
        .get(h.url(&format!("/u-{}/whoami.json", alice.slug)))
        .header(COOKIE, &cookie)
        .header("Authorization", "Basic YXBwOnNlY3JldA==")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["headers"]["authorization"], "Basic YXBwOnNlY3JldA==");

    let on_bob = h
        .client
        .get(h.url(&format!("/u-{}/", bob.slug)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(on_bob.status(), StatusCode::FORBIDDEN);
    let in_query = h
        .client
        .get(h.url(&format!(
            "/u-{}/?access_token={token}&token={token}",
            alice.slug
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        in_query.status(),
        StatusCode::UNAUTHORIZED,
        "tokens are never taken from the query string"
    );

    let id = created["id"].as_str().unwrap();
    assert_eq!(api.delete(&format!("me/tokens/{id}")).await.0, 200);
    let after = h
        .client
        .get(h.url(&format!("/u-{}/", alice.slug)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_sign_in_with_one_answer_for_every_kind_of_failure() {
    let h = Harness::start(Options::toml("[login]\npasswords = true\npassword_failures_per_hour = 3\n[lifecycle]\nstart_on_login = false"))
    .await;
    let admin = h.admin().await;
    let alice = h.user("alice").await;
    let _bob = h.user("bob").await; // has no password
    let set = |password: &str| admin.put("users/alice/password", json!({ "password": password }));
    assert_eq!(set("short").await.0, 400);
    assert_eq!(set("correct horse battery").await.0, 200);
    let stored = h
        .app
        .accounts
        .find_user("alice")
        .unwrap()
        .password_hash
        .clone()
        .unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains("correct horse"));

    let sign_in = |user: &'static str, password: &'static str| {
        h.client
            .post(h.url("/_spawngate/login"))
            .form(&[("username", user), ("password", password)])
            .send()
    };
    let wrong = sign_in("alice", "wrong horse battery").await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let wrong = without_form_guard(&wrong.text().await.unwrap());
    for (user, password) in [
        ("nobody", "correct horse battery"),
        ("bob", "correct horse battery"),
    ] {
        let resp = sign_in(user, password).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            without_form_guard(&resp.text().await.unwrap()),
            wrong,
            "same answer for {user}"
        );
    }
    let ok = sign_in("alice", "correct horse battery").await.unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()[LOCATION], format!("/u-{}/", alice.slug));
    let cookie = session_cookie(ok.headers(), h.cookie_name()).unwrap();
    let app_url = h.url(&format!("/u-{}/", alice.slug));
    assert_eq!(h.get_with_cookie(&app_url, &cookie).await.status(), 200);

    // Login CSRF: `Origin: null` (a sandboxed frame, a data: page) signs nobody
    // in unless Fetch Metadata says the form is our own page's, or (browsers
    // without Fetch Metadata) the form echoes the guard cookie its page set.
    let page = h
        .client
        .get(h.url("/_spawngate/login"))
        .send()
        .await
        .unwrap();
    let guard_cookie = session_cookie(page.headers(), "spawngate_form").expect("guard cookie");
    let guard = page
        .text()
        .await
        .unwrap()
        .split("name=\"form_guard\" value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("guard field")
        .to_owned();
    let post_from_null = |fetch_site: Option<&'static str>, cookie: Option<&str>| {
        let mut req = h
            .client
            .post(h.url("/_spawngate/login"))
            .header("Origin", "null")
            .form(&[
                ("username", "alice"),
                ("password", "correct horse battery"),
                ("form_guard", guard.as_str()),
            ]);
        if let Some(site) = fetch_site {
            req = req.header("Sec-Fetch-Site", site);
        }
        if let Some(cookie) = cookie {
            req = req.header(COOKIE, cookie.to_owned());
        }
        req.send()
    };
    assert_eq!(
        post_from_null(None, None).await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "a page elsewhere cannot make the browser send the Strict guard cookie"
    );
    assert_eq!(
        post_from_null(Some("cross-site"), Some(&guard_cookie))
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post_from_null(None, Some(&guard_cookie))
            .await
            .unwrap()
            .status(),
        StatusCode::SEE_OTHER,
        "an older browser posting our own form"
    );
    assert_eq!(
        post_from_null(Some("same-origin"), None)
            .await
            .unwrap()
            .status(),
        StatusCode::SEE_OTHER
    );

    // Changing one's own password needs the current one (and the CSRF header).
    let me = h.me(&cookie).await;
    let change = |current: &'static str| {
        h.client
            .put(h.url("/_spawngate/api/me/password"))
            .header(COOKIE, &cookie)
            .header("X-Spawngate-CSRF", me["csrf"].as_str().unwrap())
            .json(&serde_json::json!({ "current": current, "new": "a brand new passphrase" }))
            .send()
    };
    assert_eq!(
        change("not it at all").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let elsewhere = h.login("alice").await;
    assert_eq!(h.get_with_cookie(&app_url, &elsewhere).await.status(), 200);
    let changed: serde_json::Value = change("correct horse battery")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // `elsewhere` and the two sign-ins of the origin checks above.
    assert_eq!(changed["other_sessions_ended"], 3, "{changed}");
    assert_eq!(
        h.get_with_cookie(&app_url, &elsewhere).await.status(),
        401,
        "the other session ended with the password change"
    );
    assert_eq!(h.get_with_cookie(&app_url, &cookie).await.status(), 200);
    assert_eq!(
        sign_in("alice", "correct horse battery")
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // The third wrong password this hour pauses password sign-in for alice (the
    // right one included); the successful sign-in above did not count. Others
    // are not affected.
    assert_eq!(
        sign_in("alice", "guess number three")
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sign_in("alice", "a brand new passphrase")
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        sign_in("bob", "anything at all").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // An admin resetting the password signs alice out everywhere.
    assert_eq!(h.get_with_cookie(&app_url, &cookie).await.status(), 200);
    assert_eq!(set("reset by the admin").await.0, 200);
    assert_eq!(h.get_with_cookie(&app_url, &cookie).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_sign_up_creates_the_account_on_the_first_confirmed_link_only_for_allowed_domains() {
    let smtp = Smtp::start().await;
    let h = with_email(&smtp, "[login]\nsignup_domains = [\"example.org\"]\n").await;

    // Outside the allowed domains: the same answer, no mail, no account.
    let (status, outside) = request_link(&h, "mallory@elsewhere.net").await;
    assert_eq!(status, 200);
    let (status, inside) = request_link(&h, "New.Person@example.org").await;
    assert_eq!(status, 200);
    assert_eq!(
        outside, inside,
        "the answer does not reveal who may sign up"
    );

    let admin = h.admin().await;
    let emails = || async {
        let users = admin.users().await;
        let emails: Vec<String> = users
            .iter()
            .filter_map(|u| u["email"].as_str().map(str::to_owned))
            .collect();
        emails
    };
    let mail = smtp.wait_for("new.person@example.org").await;
    let link = link_in(&mail);
    // Asking for the link created nothing yet.
    assert_eq!(emails().await, Vec::<String>::new());
    let token = link.split("token=").nth(1).unwrap();
    let confirm = h
        .client
        .get(h.url(&format!("/_spawngate/login?token={token}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        confirm.contains("Create an account for <strong>new.person@example.org</strong>"),
        "{confirm}"
    );

    let cookie =
        crate::harness::login_with_link(&h.client, &h.public, &link, h.cookie_name()).await;
    let user = admin.get_ok("users/new.person").await;
    assert_eq!(user["email"], "new.person@example.org", "{user}");
    let slug = user["slug"].as_str().unwrap();
    h.wait_router(&format!("u-{slug}")).await;
    let who = h
        .get_with_cookie(h.url(&format!("/u-{slug}/whoami.json")), &cookie)
        .await;
    assert_eq!(who.status(), 200);
    assert_eq!(
        who.json::<serde_json::Value>().await.unwrap()["user"],
        "new.person"
    );

    // A second link for the same address signs in to the same account.
    request_link(&h, "new.person@example.org").await;
    let second = link_in(&smtp.wait_for_new("new.person@example.org", &[mail]).await);
    crate::harness::login_with_link(&h.client, &h.public, &second, h.cookie_name()).await;
    // One account for the address, and none outside the allowed domains.
    assert_eq!(emails().await, ["new.person@example.org"]);
    assert!(
        !smtp
            .messages()
            .iter()
            .any(|m| m.contains("mallory@elsewhere.net")),
        "no mail outside the allowed domains"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_links_go_out_over_starttls_or_implicit_tls_with_smtp_auth() {
    for mode in ["starttls", "tls"] {
        let smtp = Smtp::start_secure(mode, "mailer", "mail-secret").await;
        let email = |port: u16, extra: &str| {
            format!(
                "[email]\nenabled = true\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsmtp_tls = \"{mode}\"\nsmtp_username = \"mailer\"\nfrom = \"spawngate <login@example.org>\"\n{extra}",
            )
        };
        let h = Harness::start(Options {
            extra_toml: email(
                smtp.port,
                &format!(
                    "smtp_password = \"mail-secret\"\nca_file = {:?}\n",
                    smtp.ca_file()
                ),
            ),
            ..Default::default()
        })
        .await;
        let alice = h
            .app
            .accounts
            .add_user("test", "alice", Some("alice@example.org"))
            .await
            .unwrap();
        h.wait_router(&format!("u-{}", alice.slug)).await;
        assert_eq!(request_link(&h, "alice@example.org").await.0, 200);
        let mail = smtp.wait_for("alice@example.org").await;
        let cookie =
            crate::harness::login_with_link(&h.client, &h.public, &link_in(&mail), h.cookie_name())
                .await;
        let who = h
            .get_with_cookie(h.url(&format!("/u-{}/whoami.json", alice.slug)), &cookie)
            .await;
        assert_eq!(who.status(), 200, "{mode}: the mailed link signs in");
        drop(h);

        // A server certificate spawngate does not trust, or a wrong password: no
        // mail goes out (and the sign-in page answers the same).
        for (what, extra) in [
            (
                "untrusted certificate",
                "smtp_password = \"mail-secret\"\n".to_owned(),
            ),
            (
                "wrong password",
                format!(
                    "smtp_password = \"wrong\"\nca_file = {:?}\n",
                    smtp.ca_file()
                ),
            ),
        ] {
            // Through a relay that tells when spawngate's attempt is over.
            let tap = SmtpTap::start(smtp.port).await;
            let h = Harness::start(Options {
                extra_toml: email(tap.port, &extra),
                with_traefik: false,
                ..Default::default()
            })
            .await;
            h.app
                .accounts
                .add_user("test", "bob", Some("bob@example.org"))
                .await
                .unwrap();
            let resp = h
                .client
                .post(format!("{}/_spawngate/login", h.direct))
                .form(&[("email", "bob@example.org")])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            tap.wait_closed(1).await;
            assert!(
                !smtp
                    .messages()
                    .iter()
                    .any(|m| m.contains("bob@example.org")),
                "{mode}, {what}: nothing delivered"
            );
        }
    }
}
