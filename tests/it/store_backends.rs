//! One store test suite, run against both backends: the embedded sled store and
//! a shared PostgreSQL database (a throw-away server, see `postgres_setup`). Then
//! what only a shared store has: two replicas on one database see each other's
//! writes, never both win a race, refuse a newer schema, and a migration copies
//! an embedded store over.

use std::path::Path;
use std::time::Duration;

use spawngate::store::{HandoffCode, Store, StoreError, TokenRejection, backup};

use crate::harness::wait_until;
use crate::postgres_setup::PgServer;

/// What every backend must do, through the store's public operations.
async fn suite(s: &Store) {
    // Users: unique names and emails, indexed, in the directory at once.
    let alice = s
        .create_user("alice", Some("alice@example.org"), None)
        .await
        .unwrap();
    assert!(matches!(
        s.create_user("alice", None, None).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        s.create_user("alice2", Some("alice@example.org"), None)
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let bob = s
        .create_user("bob", None, Some((20000, 29999)))
        .await
        .unwrap();
    assert!(bob.host_port.is_some());
    assert_eq!(s.snapshot().by_name("alice").unwrap().id, alice.id);
    assert_eq!(s.snapshot().by_slug(&bob.slug).unwrap().name, "bob");

    // Sessions: found, then gone once deleted.
    let (sid, _) = s.create_session(&alice.id, 3600).await.unwrap();
    assert_eq!(s.session(&sid).unwrap().unwrap().user_id, alice.id);
    s.delete_session(&sid).await.unwrap();
    assert!(s.session(&sid).unwrap().is_none());

    // Login links are used up exactly once, even by racing confirmations.
    let (link, _) = s.issue_login_token(&alice.id, 900).await.unwrap();
    let (a, b) = tokio::join!(s.consume_login_token(&link), s.consume_login_token(&link));
    let wins = [a.unwrap(), b.unwrap()]
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert_eq!(wins, 1, "one confirmation wins");
    assert_eq!(
        s.consume_login_token(&link).await.unwrap().unwrap_err(),
        TokenRejection::Unknown
    );

    // Concurrent changes to one user all survive (no stale write-back).
    add_groups_concurrently(&[s], &alice.id, 8).await;
    assert_eq!(s.snapshot().by_id(&alice.id).unwrap().groups.len(), 8);

    // Environments: added with their own slug, removed with their index.
    let (_, lab) = s
        .add_environment(&alice.id, "lab", None, false, None, |_| Ok::<(), ()>(()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.snapshot().environment(&lab.slug).unwrap().name(), "lab");
    assert!(
        s.remove_environment(&alice.id, "lab")
            .await
            .unwrap()
            .is_some()
    );
    assert!(s.snapshot().environment(&lab.slug).is_none());
    assert!(s.environment_was_deleted(&lab.slug).unwrap());

    // Hand-off codes once; rate-limit counters per key.
    let code = s
        .issue_handoff(&HandoffCode {
            user_id: alice.id.clone(),
            slug: alice.slug.clone(),
            parent: spawngate::ids::SessionId::generate(),
            next: "/".into(),
            expires: spawngate::time::unix_now() + 60,
        })
        .await
        .unwrap();
    assert!(s.redeem_handoff(&code).await.unwrap().is_some());
    assert!(s.redeem_handoff(&code).await.unwrap().is_none());
    assert_eq!(s.count_attempt("t", "k", 3600, u32::MAX).await.unwrap(), 1);
    assert_eq!(s.count_attempt("t", "k", 3600, u32::MAX).await.unwrap(), 2);

    // Deleting a user takes their credentials and leaves a tombstone.
    let (bob_session, _) = s.create_session(&bob.id, 3600).await.unwrap();
    let (bob_token, _) = s.create_api_token(&bob.id, "ci").await.unwrap();
    s.delete_user(&bob, false).await.unwrap();
    assert!(s.snapshot().by_name("bob").is_none());
    assert!(s.session(&bob_session).unwrap().is_none());
    assert!(s.api_token(&bob_token).unwrap().is_none());
    assert_eq!(s.was_deleted(bob.id.as_str()).unwrap(), Some(false));
    // The name is free again.
    s.create_user("bob", None, None).await.unwrap();

    // A backup of it reads back, with every user.
    let taken = backup::parse(&backup::export(s).await.unwrap()).unwrap();
    assert_eq!(taken.users(), 2);

    // Keys are generated once and kept.
    assert_eq!(s.session_key().unwrap(), s.session_key().unwrap());
    assert_ne!(s.session_key().unwrap(), s.container_key().unwrap());
    s.check().unwrap();
    s.check_writable().await.unwrap();
}

/// `n` changes to one user at once, each adding a group, spread over `stores`.
async fn add_groups_concurrently(stores: &[&Store], id: &spawngate::ids::UserId, n: usize) {
    let mut changes = Vec::new();
    for i in 0..n {
        let s = stores[i % stores.len()].clone();
        let id = id.clone();
        changes.push(tokio::spawn(async move {
            s.modify_user(&id, |u| {
                u.groups.push(format!("g{i}"));
                Ok::<(), ()>(())
            })
            .await
            .unwrap()
            .unwrap();
        }));
    }
    for c in changes {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    suite(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_passes_the_suite() {
    let url = PgServer::shared().fresh_database();
    let s = Store::connect(&url).await.unwrap();
    suite(&s).await;
    // Everything was committed: a replica starting now loads the same state.
    s.flush().await.unwrap();
    let again = Store::connect(&url).await.unwrap();
    assert_eq!(again.snapshot().len(), 2);
    assert_eq!(again.session_key().unwrap(), s.session_key().unwrap());
}

/// Two replicas on one database: what one writes, the other sees without
/// asking; of racing writers exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_see_each_others_writes_and_never_both_win() {
    let url = PgServer::shared().fresh_database();
    let (a, b) = (
        Store::connect(&url).await.unwrap(),
        Store::connect(&url).await.unwrap(),
    );
    assert_eq!(a.session_key().unwrap(), b.session_key().unwrap());

    let alice = a.create_user("alice", None, None).await.unwrap();
    let (sid, _) = a.create_session(&alice.id, 3600).await.unwrap();
    wait_until(5, "B sees A's user and session", || {
        b.snapshot().by_name("alice").is_some() && b.session(&sid).unwrap().is_some()
    })
    .await;
    // A revocation on B is seen by A (and bumps what A derived from sessions).
    let before = a.write_generation();
    b.delete_session(&sid).await.unwrap();
    wait_until(5, "A sees B's revocation", || {
        a.session(&sid).unwrap().is_none() && a.write_generation() != before
    })
    .await;

    // The same name created on both at once: one wins, both agree on which.
    let (x, y) = tokio::join!(
        a.create_user("carol", None, None),
        b.create_user("carol", None, None)
    );
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "one of two racing creates wins: {x:?} / {y:?}"
    );
    let winner = x.or(y).unwrap();
    wait_until(5, "both replicas show the winner", || {
        a.snapshot().by_name("carol").map(|u| &u.id) == Some(&winner.id)
            && b.snapshot().by_name("carol").map(|u| &u.id) == Some(&winner.id)
    })
    .await;

    // A login link confirmed on both replicas at once signs in once.
    let (link, _) = a.issue_login_token(&alice.id, 900).await.unwrap();
    let (p, q) = tokio::join!(a.consume_login_token(&link), b.consume_login_token(&link));
    assert_eq!(
        [p.unwrap().is_ok(), q.unwrap().is_ok()]
            .iter()
            .filter(|ok| **ok)
            .count(),
        1
    );

    // Rate-limit counters add up across replicas.
    a.count_attempt("per_email", "e", 3600, u32::MAX)
        .await
        .unwrap();
    assert_eq!(
        b.count_attempt("per_email", "e", 3600, u32::MAX)
            .await
            .unwrap(),
        2
    );

    // Concurrent changes to one user from both replicas all survive.
    add_groups_concurrently(&[&a, &b], &alice.id, 10).await;
    wait_until(5, "both replicas hold all ten changes", || {
        [&a, &b].iter().all(|s| {
            s.snapshot()
                .by_id(&alice.id)
                .is_some_and(|u| u.groups.len() == 10)
        })
    })
    .await;
}

/// Exactly one replica leads; when it goes, another takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over_when_it_goes() {
    let url = PgServer::shared().fresh_database();
    let a = Store::connect(&url).await.unwrap();
    let b = Store::connect(&url).await.unwrap();
    wait_until(10, "a leader is chosen", || a.is_leader() || b.is_leader()).await;
    assert!(!(a.is_leader() && b.is_leader()), "never two leaders");
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    drop(leader);
    wait_until(10, "the follower takes over", || follower.is_leader()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_a_newer_spawngate_is_refused() {
    let server = PgServer::shared();
    let url = server.fresh_database();
    drop(Store::connect(&url).await.unwrap());
    let db = url.rsplit('/').next().unwrap();
    server.psql(db, "UPDATE spawngate_schema SET version = version + 1");
    match Store::connect(&url).await {
        Err(e) => assert!(
            e.to_string().contains("newer than this spawngate knows"),
            "{e}"
        ),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

/// `spawngate store migrate`'s path: an embedded store's backup copied into an
/// empty PostgreSQL database reads back the same; a non-empty one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_migrates_into_postgres_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let local = Store::open(dir.path()).unwrap();
    let alice = local
        .create_user("alice", None, Some((30000, 30999)))
        .await
        .unwrap();
    let (sid, _) = local.create_session(&alice.id, 3600).await.unwrap();
    local.audit("operator", "user.create", "alice", None);
    let key = local.session_key().unwrap();
    let taken = backup::parse(&backup::export(&local).await.unwrap()).unwrap();

    let url = PgServer::shared().fresh_database();
    let shared = Store::connect(&url).await.unwrap();
    let done = backup::import_shared(&shared, &taken).await.unwrap();
    assert_eq!(done.users, 1);
    // The session (and the key that signed its cookie) came along.
    assert_eq!(shared.session(&sid).unwrap().unwrap().user_id, alice.id);
    assert_eq!(shared.session_key().unwrap(), key);
    assert!(matches!(
        backup::import_shared(&shared, &taken).await,
        Err(backup::BackupError::NotEmpty { .. })
    ));
    // Another replica starting now sees it all.
    let other = Store::connect(&url).await.unwrap();
    assert_eq!(
        other.snapshot().by_name("alice").unwrap().host_port,
        alice.host_port
    );

    // And back: the shared store's backup restores into an embedded one.
    let back = backup::parse(&backup::export(&shared).await.unwrap()).unwrap();
    let target = tempfile::tempdir().unwrap();
    backup::restore(target.path(), &back, false).await.unwrap();
    let restored = Store::open(target.path()).unwrap();
    assert_eq!(restored.session(&sid).unwrap().unwrap().user_id, alice.id);
}

/// PostgreSQL restarts under a replica: writes fail meanwhile (no silent loss),
/// and the replica reconnects and catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reconnects_and_catches_up_after_postgres_restarts() {
    let server = PgServer::dedicated();
    let url = server.fresh_database();
    let a = Store::connect(&url).await.unwrap();
    let b = Store::connect(&url).await.unwrap();
    server.stop();
    assert!(a.create_user("during", None, None).await.is_err());
    wait_until(10, "the replica reports the store unavailable", || {
        a.check().is_err()
    })
    .await;
    server.start();
    // Written through B once it is back; A learns of it without a restart.
    let mut created = None;
    for _ in 0..100 {
        match b.create_user("after", None, None).await {
            Ok(u) => {
                created = Some(u);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let created = created.expect("B writes again after the restart");
    wait_until(15, "A catches up and is healthy again", || {
        a.check().is_ok() && a.snapshot().by_id(&created.id).is_some()
    })
    .await;
    assert!(
        a.snapshot().by_name("during").is_none(),
        "the failed write left nothing"
    );
}

/// The operator's path: `spawngate store migrate --to postgres://…` copies an
/// embedded store; the CLI then works on the shared one; a second copy into the
/// same database is refused; and `--to DIR` copies it back.
#[test]
fn the_cli_migrates_an_embedded_store_to_postgres_and_back() {
    use crate::cli::{spawngate, stderr, stdout};
    let dir = tempfile::tempdir().unwrap();
    for name in ["alice", "bob"] {
        let add = spawngate(dir.path(), &["user", "add", name], &[]);
        assert!(add.status.success(), "{}", stderr(&add));
    }
    let url = PgServer::shared().fresh_database();
    let migrate = spawngate(dir.path(), &["store", "migrate", "--to", &url], &[]);
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    assert!(
        stdout(&migrate).contains("copied 2 users"),
        "{}",
        stdout(&migrate)
    );

    let shared = [("SPAWNGATE_STORE_URL", url.as_str())];
    let elsewhere = tempfile::tempdir().unwrap();
    let list = spawngate(elsewhere.path(), &["user", "list", "--json"], &shared);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(stdout(&list).contains("\"alice\"") && stdout(&list).contains("\"bob\""));

    let again = spawngate(dir.path(), &["store", "migrate", "--to", &url], &[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("is not empty"),
        "{}",
        stderr(&again)
    );

    let back = tempfile::tempdir().unwrap();
    let target = back.path().join("copy");
    let target = target.to_str().unwrap();
    let home = spawngate(
        elsewhere.path(),
        &["store", "migrate", "--to", target],
        &shared,
    );
    assert!(home.status.success(), "{}", stderr(&home));
    let list = spawngate(Path::new(target), &["user", "list", "--json"], &[]);
    assert!(stdout(&list).contains("\"alice\""), "{}", stdout(&list));

    let bad = spawngate(
        dir.path(),
        &["store", "migrate", "--to", "mysql://x/y"],
        &[],
    );
    assert!(!bad.status.success());
}
