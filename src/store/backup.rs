//! Backup and restore of the whole store as one JSON-lines file.
//!
//! ```text
//! {"format":"spawngate-backup","version":1,"created":"2026-12-01T09:30:00Z","spawngate":"0.1.0"}
//! {"tree":"users","key":"3f9a…","value":{"v":1,"id":"3f9a…","name":"alice",…}}
//! {"tree":"host_ports","key":"4e21","value":"3f9a…"}
//! …one line per record of every sled tree…
//! {"end":"spawngate-backup","records":42,"sha256":"…"}
//! ```
//!
//! The end line counts the records and hashes every byte before it, so a truncated
//! or edited file is refused. A restore checks every line (and that the user indexes
//! agree with the users) before anything changes, builds the new store in a
//! directory of its own inside the data directory, reads it back, and only then
//! swaps it in by rename, keeping the old store next to it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::kv::{IVec, Tree, TxError};
use super::records::{
    AdminToken, ApiToken, AuditEntry, ContainerRecord, DecodeError, LoginToken, Session, SshKey,
    User, decode,
};
use super::{
    Store, StoreError, admin_tokens, api_tokens, audit, containers, deleted_users, login_tokens,
    meta, one_time, sessions, ssh_keys, users,
};

pub const FORMAT: &str = "spawngate-backup";
/// The file format this build writes and the newest it restores.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Something wrong in the file, named by its line (1-based).
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error(
        "the store in '{path}' is not empty ({users} users, {records} records): pass --force to replace it (the old store is kept next to it)"
    )]
    NotEmpty {
        path: String,
        users: usize,
        records: usize,
    },
    #[error("the store in '{path}' is in use by a running spawngate: stop it before restoring")]
    InUse { path: String },
    #[error(
        "the existing store in '{path}' cannot be opened ({source}): pass --force to replace it"
    )]
    Unopenable { path: String, source: StoreError },
    /// A record in the live store that cannot be written out.
    #[error("cannot back up record {path}: {source}")]
    Unreadable { path: String, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("the restored store does not read back as the backup: {0}")]
    Verify(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

/// How a tree's keys are written: as text, or as hex of a fixed number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyEnc {
    Text,
    Hex(usize),
}

/// What a tree's values are, which decides how they are written and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A user id (the index trees), written as text.
    UserId,
    /// Raw bytes (keys in `meta`), written as hex.
    Bytes,
    /// A versioned JSON record, written as the JSON object itself.
    User,
    Session,
    LoginToken,
    AdminToken,
    ApiToken,
    Container,
    Audit,
    SshKey,
}

struct TreeSpec {
    name: &'static str,
    key: KeyEnc,
    kind: Kind,
}

/// Every tree of the store, in the order a backup lists them. A unit test checks
/// that this is exactly the set of trees the store opens.
const TREES: [TreeSpec; 16] = [
    spec(users::TREE, KeyEnc::Text, Kind::User),
    spec(users::NAMES, KeyEnc::Text, Kind::UserId),
    spec(users::SLUGS, KeyEnc::Text, Kind::UserId),
    spec(users::EMAILS, KeyEnc::Text, Kind::UserId),
    spec(users::PORTS, KeyEnc::Hex(2), Kind::UserId),
    spec(sessions::TREE, KeyEnc::Text, Kind::Session),
    spec(login_tokens::TREE, KeyEnc::Hex(32), Kind::LoginToken),
    spec(admin_tokens::TREE, KeyEnc::Hex(32), Kind::AdminToken),
    spec(api_tokens::TREE, KeyEnc::Hex(32), Kind::ApiToken),
    spec(containers::TREE, KeyEnc::Text, Kind::Container),
    spec(audit::TREE, KeyEnc::Hex(8), Kind::Audit),
    spec(meta::TREE, KeyEnc::Text, Kind::Bytes),
    // Tombstones: deleted user id → when, and whether the volume stays.
    spec(deleted_users::TREE, KeyEnc::Text, Kind::Bytes),
    spec(ssh_keys::TREE, KeyEnc::Text, Kind::SshKey),
    // Short-lived: hand-off codes (a minute) and rate-limit windows (an hour).
    spec(one_time::HANDOFFS, KeyEnc::Hex(32), Kind::Bytes),
    spec(one_time::RATE_LIMITS, KeyEnc::Text, Kind::Bytes),
];

const fn spec(name: &'static str, key: KeyEnc, kind: Kind) -> TreeSpec {
    TreeSpec { name, key, kind }
}

fn tree<'a>(store: &'a Store, name: &str) -> Option<&'a Tree> {
    store
        .trees()
        .into_iter()
        .find_map(|(n, tree)| (n == name).then_some(tree))
}

fn spec_of(name: &str) -> Option<&'static TreeSpec> {
    TREES.iter().find(|s| s.name == name)
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    spawngate: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine {
    tree: String,
    key: String,
    value: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    end: String,
    records: usize,
    sha256: String,
}

/// Raw contents of every tree, taken at one point in time.
type Trees = Vec<(&'static TreeSpec, Vec<(IVec, IVec)>)>;

/// Every tree at one point in time. The embedded store is read while no write
/// runs (writes share the key-value layer's snapshot lock; this takes it
/// exclusively), so the snapshot is a state the store really was in between two
/// operations. A shared store is read from PostgreSQL in one repeatable-read
/// transaction, which other replicas' writes do not disturb.
async fn snapshot(store: &Store) -> Result<Trees, StoreError> {
    let Some(replica) = store.kv.replica() else {
        return local_snapshot(store);
    };
    let mut by_tree: HashMap<String, Vec<(IVec, IVec)>> = HashMap::new();
    for (tree, key, value) in replica.export().await? {
        by_tree
            .entry(tree)
            .or_default()
            .push((IVec::from(key), IVec::from(value)));
    }
    Ok(TREES
        .iter()
        .map(|spec| (spec, by_tree.remove(spec.name).unwrap_or_default()))
        .collect())
}

/// Every tree as this process holds it (see [`snapshot`]; on PostgreSQL, the
/// mirror: right after an import, exactly what was written).
fn local_snapshot(store: &Store) -> Result<Trees, StoreError> {
    let _all = store.kv.exclusive();
    let mut out = Vec::with_capacity(TREES.len());
    for spec in &TREES {
        let Some(tree) = tree(store, spec.name) else {
            continue;
        };
        let entries = tree.iter().collect::<Result<Vec<_>, _>>()?;
        out.push((spec, entries));
    }
    Ok(out)
}

/// The whole store as a backup file (see the module docs for the format). The
/// embedded store is read off the async workers (its writes wait meanwhile).
pub async fn export(store: &Store) -> Result<Vec<u8>, BackupError> {
    if store.is_shared() {
        return encode(snapshot(store).await?);
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || encode(local_snapshot(&store)?))
        .await
        .map_err(|e| BackupError::Verify(format!("the backup task failed: {e}")))?
}

fn encode(trees: Trees) -> Result<Vec<u8>, BackupError> {
    let mut out = Vec::new();
    let header = Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        created: Some(crate::time::rfc3339(crate::time::unix_now())),
        spawngate: Some(env!("CARGO_PKG_VERSION").to_owned()),
    };
    push_line(&mut out, &header);
    let mut records = 0;
    for (spec, entries) in trees {
        for (key, value) in entries {
            let corrupt = |what: &str| BackupError::Unreadable {
                path: format!("{}/{}", spec.name, hex::encode(&key)),
                source: StoreError::Unavailable(what.to_owned()),
            };
            let key_text = match spec.key {
                KeyEnc::Text => {
                    String::from_utf8(key.to_vec()).map_err(|_| corrupt("the key is not text"))?
                }
                KeyEnc::Hex(_) => hex::encode(&key),
            };
            let value = match spec.kind {
                Kind::UserId => Value::String(
                    String::from_utf8(value.to_vec())
                        .map_err(|_| corrupt("the user id is not text"))?,
                ),
                Kind::Bytes => Value::String(hex::encode(&value)),
                _ => serde_json::from_slice(&value)
                    .map_err(|e| corrupt(&format!("the record is not JSON ({e})")))?,
            };
            push_line(
                &mut out,
                &RecordLine {
                    tree: spec.name.to_owned(),
                    key: key_text,
                    value,
                },
            );
            records += 1;
        }
    }
    let sha256 = hex::encode(Sha256::digest(&out));
    push_line(
        &mut out,
        &EndLine {
            end: FORMAT.to_owned(),
            records,
            sha256,
        },
    );
    Ok(out)
}

fn push_line<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    // Plain structs of strings, numbers and JSON values always serialize.
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

/// One checked record of a backup.
#[derive(Debug)]
struct Record {
    line: usize,
    tree: &'static TreeSpec,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// A backup that passed every check; nothing has been written yet.
#[derive(Debug)]
pub struct Backup {
    records: Vec<Record>,
    pub created: Option<String>,
}

impl std::fmt::Debug for TreeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Backup {
    pub fn records(&self) -> usize {
        self.records.len()
    }

    pub fn users(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.tree.kind == Kind::User)
            .count()
    }
}

/// Parses and checks a whole backup file. Every error names the line.
pub fn parse(input: &[u8]) -> Result<Backup, BackupError> {
    let at = |line: usize, message: String| BackupError::Line { line, message };
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in input.iter().enumerate() {
        if *b == b'\n' {
            lines.push((start, &input[start..i]));
            start = i + 1;
        }
    }
    if start < input.len() {
        // No final newline: the last line may have been cut off; its JSON tells.
        lines.push((start, &input[start..]));
    }
    let Some((_, first)) = lines.first() else {
        return Err(at(1, "the file is empty: not a spawngate backup".into()));
    };
    let header: Header = serde_json::from_slice(first)
        .map_err(|e| at(1, format!("not a spawngate backup header ({e})")))?;
    if header.format != FORMAT {
        return Err(at(
            1,
            format!("not a spawngate backup (format '{}')", header.format),
        ));
    }
    if header.version > VERSION {
        return Err(at(
            1,
            format!(
                "backup format version {} is newer than this spawngate reads (up to {VERSION}): restore it with a newer spawngate",
                header.version
            ),
        ));
    }
    if header.version == 0 {
        return Err(at(1, "backup format version 0 does not exist".into()));
    }

    let mut records = Vec::new();
    let mut seen = HashSet::new();
    let mut end = None;
    for (i, (offset, bytes)) in lines.iter().enumerate().skip(1) {
        let n = i + 1;
        if end.is_some() {
            return Err(at(n, "data after the end line".into()));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            at(
                n,
                format!("not valid JSON ({e}): the file is truncated or corrupt"),
            )
        })?;
        if value.get("end").is_some() {
            let line: EndLine = serde_json::from_value(value)
                .map_err(|e| at(n, format!("invalid end line ({e})")))?;
            if line.end != FORMAT {
                return Err(at(n, format!("invalid end line (end '{}')", line.end)));
            }
            if line.records != records.len() {
                return Err(at(
                    n,
                    format!(
                        "the end line counts {} records but the file has {}: it is corrupt",
                        line.records,
                        records.len()
                    ),
                ));
            }
            let digest = hex::encode(Sha256::digest(&input[..*offset]));
            if !line.sha256.eq_ignore_ascii_case(&digest) {
                return Err(at(
                    n,
                    "the checksum does not match the lines before it: the file was changed or is corrupt"
                        .into(),
                ));
            }
            end = Some(n);
            continue;
        }
        let line: RecordLine =
            serde_json::from_value(value).map_err(|e| at(n, format!("invalid record ({e})")))?;
        let record = check_record(n, line).map_err(|m| at(n, m))?;
        if !seen.insert((record.tree.name, record.key.clone())) {
            return Err(at(
                n,
                format!(
                    "a second record for the same key in tree '{}'",
                    record.tree.name
                ),
            ));
        }
        records.push(record);
    }
    if end.is_none() {
        return Err(at(
            lines.len(),
            "the file ends here without its end line: it is truncated".into(),
        ));
    }
    check_indexes(&records)?;
    Ok(Backup {
        records,
        created: header.created,
    })
}

fn check_record(line: usize, record: RecordLine) -> Result<Record, String> {
    let spec = spec_of(&record.tree).ok_or_else(|| format!("unknown tree '{}'", record.tree))?;
    let key = match spec.key {
        KeyEnc::Text if record.key.is_empty() => return Err("empty key".into()),
        KeyEnc::Text => record.key.into_bytes(),
        KeyEnc::Hex(len) => match hex::decode(&record.key) {
            Ok(k) if k.len() == len => k,
            _ => {
                return Err(format!(
                    "key '{}' in tree '{}' is not {len} bytes of hex",
                    record.key, spec.name
                ));
            }
        },
    };
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let value = match spec.kind {
        Kind::UserId => text(&record.value)
            .ok_or("the value must be a user id")?
            .into_bytes(),
        Kind::Bytes => text(&record.value)
            .and_then(|s| hex::decode(s).ok())
            .ok_or("the value must be hex")?,
        kind => {
            if !record.value.is_object() {
                return Err("the value must be a JSON object".into());
            }
            let bytes = serde_json::to_vec(&record.value).map_err(|e| e.to_string())?;
            check_json(kind, &key, &bytes)?;
            bytes
        }
    };
    if spec.name == "meta"
        && matches!(&key[..], b"session_key" | b"container_key")
        && value.len() != 32
    {
        return Err("a key in meta must be 32 bytes".into());
    }
    Ok(Record {
        line,
        tree: spec,
        key,
        value,
    })
}

/// Decodes a record as the running store would, so whatever restores also reads.
fn check_json(kind: Kind, key: &[u8], bytes: &[u8]) -> Result<(), String> {
    fn read<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        decode::<T>(bytes).map_err(|e| match e {
            DecodeError::TooNew(v) => format!(
                "record format {v} is newer than this spawngate reads: restore it with a newer spawngate"
            ),
            DecodeError::Json(e) => format!("unreadable record ({e})"),
        })
    }
    let owner_key = |id: &str| {
        if id.as_bytes() == key {
            Ok(())
        } else {
            Err(format!("the record's user id '{id}' differs from its key"))
        }
    };
    match kind {
        Kind::User => owner_key(read::<User>(bytes)?.id.as_str()),
        Kind::Container => {
            // Keyed like `Env::record_key`: `<user id>` or `<user id>/<slug>`.
            let record = read::<ContainerRecord>(bytes)?;
            match &record.environment {
                None => owner_key(record.user_id.as_str()),
                Some(slug) => owner_key(&format!("{}/{slug}", record.user_id)),
            }
        }
        Kind::Session => read::<Session>(bytes).map(drop),
        Kind::LoginToken => read::<LoginToken>(bytes).map(drop),
        Kind::AdminToken => read::<AdminToken>(bytes).map(drop),
        Kind::ApiToken => read::<ApiToken>(bytes).map(drop),
        Kind::Audit => read::<AuditEntry>(bytes).map(drop),
        Kind::SshKey => {
            let k = read::<SshKey>(bytes)?;
            if k.fingerprint.as_bytes() == key {
                Ok(())
            } else {
                Err(format!(
                    "the key's fingerprint '{}' differs from its key",
                    k.fingerprint
                ))
            }
        }
        Kind::UserId | Kind::Bytes => Ok(()),
    }
}

type IndexKey<'a> = (&'a str, &'a [u8]);

/// The name, slug, email and host-port indexes must agree with the users both ways,
/// or the restored store would hand out a taken name or port.
fn check_indexes(records: &[Record]) -> Result<(), BackupError> {
    let mut users: HashMap<&[u8], (usize, User)> = HashMap::new();
    // (tree, key) → (line, user id)
    let mut indexes: HashMap<IndexKey<'_>, (usize, &[u8])> = HashMap::new();
    for r in records {
        match r.tree.kind {
            Kind::User => {
                if let Ok(user) = decode::<User>(&r.value) {
                    users.insert(&r.key, (r.line, user));
                }
            }
            Kind::UserId => {
                indexes.insert((r.tree.name, &r.key), (r.line, &r.value));
            }
            _ => {}
        }
    }
    let expected = |user: &User| {
        let mut keys = vec![
            ("user_names", user.name.as_bytes().to_vec()),
            ("user_slugs", user.slug.as_str().as_bytes().to_vec()),
        ];
        if let Some(email) = &user.email {
            keys.push(("user_emails", email.as_bytes().to_vec()));
        }
        if let Some(port) = user.host_port {
            keys.push(("host_ports", port.to_be_bytes().to_vec()));
        }
        // Each extra environment holds a slug (and a host port) of its own.
        for extra in &user.environments {
            keys.push(("user_slugs", extra.slug.as_str().as_bytes().to_vec()));
            if let Some(port) = extra.host_port {
                keys.push(("host_ports", port.to_be_bytes().to_vec()));
            }
        }
        keys
    };
    let mut covered = HashSet::new();
    for (id, (line, user)) in &users {
        for (tree, key) in expected(user) {
            match indexes.get(&(tree, &key[..])) {
                Some((_, owner)) if owner == id => {
                    covered.insert((tree, key));
                }
                _ => {
                    return Err(BackupError::Line {
                        line: *line,
                        message: format!(
                            "user '{}' has no matching entry in tree '{tree}'",
                            user.name
                        ),
                    });
                }
            }
        }
    }
    for ((tree, key), (line, owner)) in &indexes {
        if !covered.contains(&(*tree, key.to_vec())) {
            return Err(BackupError::Line {
                line: *line,
                message: format!(
                    "entry in tree '{tree}' points to user '{}', who does not have it",
                    String::from_utf8_lossy(owner)
                ),
            });
        }
    }
    Ok(())
}

/// Records in every tree but `meta`: a store whose only content is the keys its
/// first start generated (no users, tokens, sessions or audit log) counts as empty,
/// since replacing it loses nothing.
fn record_count(store: &Store) -> usize {
    TREES
        .iter()
        .filter(|s| s.kind != Kind::Bytes)
        .filter_map(|s| tree(store, s.name))
        .map(|t| t.len())
        .sum()
}

/// Writes a checked backup into an empty store, in one transaction. Audit
/// entries are keyed by the store's own increasing id generator, which a new
/// database restarts: they are renumbered from it in their original order, so
/// later entries sort after them.
async fn import(store: &Store, backup: &Backup) -> Result<(), BackupError> {
    let mut writes: Vec<(&Tree, Vec<u8>, &[u8])> = Vec::with_capacity(backup.records.len());
    for spec in &TREES {
        let Some(tree) = tree(store, spec.name) else {
            continue;
        };
        let mut mine: Vec<&Record> = backup
            .records
            .iter()
            .filter(|r| r.tree.name == spec.name)
            .collect();
        mine.sort_by(|a, b| a.key.cmp(&b.key));
        for r in mine {
            let key = if spec.kind == Kind::Audit {
                store.kv.generate_id()?.to_be_bytes().to_vec()
            } else {
                r.key.clone()
            };
            writes.push((tree, key, &r.value));
        }
    }
    let trees: Vec<&Tree> = store.trees().iter().map(|(_, t)| *t).collect();
    store
        .kv
        .transaction(&trees, |t| {
            for (tree, key, value) in &writes {
                if let Some(view) = trees
                    .iter()
                    .position(|x| x.name() == tree.name())
                    .and_then(|i| t.get(i))
                {
                    view.insert(key, *value)?;
                }
            }
            Ok::<_, TxError<()>>(())
        })
        .await?
        .map_err(|()| BackupError::Verify("the import was refused".into()))?;
    store.flush().await?;
    Ok(())
}

/// Reads the new store back and compares it with the backup, record by record.
fn verify(store: &Store, backup: &Backup) -> Result<(), BackupError> {
    let again =
        parse(&encode(local_snapshot(store)?)?).map_err(|e| BackupError::Verify(e.to_string()))?;
    let by_tree = |b: &Backup, name: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v: Vec<_> = b
            .records
            .iter()
            .filter(|r| r.tree.name == name)
            .map(|r| (r.key.clone(), r.value.clone()))
            .collect();
        v.sort();
        v
    };
    for spec in &TREES {
        let (want, got) = (by_tree(backup, spec.name), by_tree(&again, spec.name));
        let same = if spec.kind == Kind::Audit {
            // Renumbered on import: the entries and their order must match.
            want.iter().map(|(_, v)| v).eq(got.iter().map(|(_, v)| v))
        } else if spec.name == meta::TREE {
            // A store generates the keys a backup lacks (one taken before its
            // first start): the backup's must be there, unchanged.
            want.iter().all(|w| got.contains(w))
        } else {
            want == got
        };
        if !same {
            return Err(BackupError::Verify(format!(
                "tree '{}' holds {} records, the backup {}",
                spec.name,
                got.len(),
                want.len()
            )));
        }
    }
    if store.snapshot().len() != backup.users() {
        return Err(BackupError::Verify("the users do not load".into()));
    }
    Ok(())
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub records: usize,
    pub users: usize,
    /// Where the replaced store was moved (it is never deleted).
    pub kept: Option<PathBuf>,
}

/// Replaces the store in `data_dir` with `backup`, all or nothing. Refuses a store
/// that is in use, and a non-empty one unless `force`. The new store is built and
/// read back in `<data_dir>/restore-<time>/` first; the old one, if any, is moved
/// to `<data_dir>/db.old-<time>/` and kept.
pub async fn restore(
    data_dir: &Path,
    backup: &Backup,
    force: bool,
) -> Result<Restored, BackupError> {
    let path = data_dir.display().to_string();
    let db = data_dir.join("db");
    // Held while the new store is built, so no server can open the old one
    // meanwhile; released just before the swap (sled writes some files by path,
    // so a store must not be open while its directory moves).
    let mut old = None;
    if db.exists() {
        match Store::open(data_dir) {
            Ok(store) => {
                let records = record_count(&store);
                if records > 0 && !force {
                    return Err(BackupError::NotEmpty {
                        path,
                        users: store.snapshot().len(),
                        records,
                    });
                }
                old = Some(store);
            }
            Err(StoreError::Locked { .. }) => return Err(BackupError::InUse { path }),
            // A store too broken to open is a reason to restore: with --force the
            // broken one is moved aside like any other.
            Err(source) if !force => return Err(BackupError::Unopenable { path, source }),
            Err(_) => {}
        }
    } else {
        std::fs::create_dir_all(data_dir).map_err(io_err(format!("cannot create '{path}'")))?;
        super::restrict_permissions(data_dir);
    }

    let stamp = stamp();
    let staging = unused(data_dir, &format!("restore-{stamp}"));
    let built = build(&staging, backup).await;
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }

    drop(old);
    // Neither store may still be in use when its directory moves.
    wait_released(&db)?;
    wait_released(&staging.join("db"))?;
    let kept = if db.exists() {
        let kept = unused(data_dir, &format!("db.old-{stamp}"));
        std::fs::rename(&db, &kept).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staging);
            io_err(format!(
                "cannot move the old store aside to '{}'",
                kept.display()
            ))(e)
        })?;
        Some(kept)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(staging.join("db"), &db) {
        // Put the old store back: the data directory is as it was.
        if let Some(kept) = &kept {
            let _ = std::fs::rename(kept, &db);
        }
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io_err(format!(
            "cannot move the restored store into '{path}'"
        ))(e));
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(Restored {
        records: backup.records(),
        users: backup.users(),
        kept,
    })
}

/// Builds the store in `staging`, then reopens it and checks it against the backup.
async fn build(staging: &Path, backup: &Backup) -> Result<(), BackupError> {
    {
        let store = Store::open(staging)?;
        import(&store, backup).await?;
    }
    let store = reopen(staging)?;
    verify(&store, backup)?;
    store.flush().await?;
    Ok(())
}

/// Copies a checked backup into a shared (PostgreSQL) store that holds no
/// records yet, and reads it back: `spawngate store migrate`.
pub async fn import_shared(store: &Store, backup: &Backup) -> Result<Restored, BackupError> {
    // Replicas running on it hold its keys in memory: new ones under them
    // would split sessions and container secrets across the cluster.
    if let Some(replica) = store.kv.replica() {
        let others = replica.others_connected().await?;
        if others > 0 {
            return Err(BackupError::InUse {
                path: format!(
                    "the PostgreSQL store ({others} sessions of other spawngate processes)"
                ),
            });
        }
    }
    let records = record_count(store);
    if records > 0 {
        return Err(BackupError::NotEmpty {
            path: "the PostgreSQL store".into(),
            users: store.snapshot().len(),
            records,
        });
    }
    // The keys the replica generated on connecting give way to the backup's.
    import(store, backup).await?;
    store.refresh_directory()?;
    verify(store, backup)?;
    Ok(Restored {
        records: backup.records(),
        users: backup.users(),
        kept: None,
    })
}

/// Opens a store this process has just closed. sled's background writers may hold
/// the database file (and its lock) a moment after the handle drops: retry briefly.
fn reopen(dir: &Path) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Waits (bounded) until no sled handle of this process holds the database in
/// `db_dir`: its background threads may outlive the dropped handle a moment, and
/// a directory moved under them would receive their last writes. sled holds an
/// exclusive `flock` on `<db_dir>/db` while open; taking it ourselves proves it is
/// free.
fn wait_released(db_dir: &Path) -> Result<(), BackupError> {
    let lock_file = db_dir.join("db");
    let Ok(file) = std::fs::File::open(&lock_file) else {
        return Ok(()); // no store there
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                return Ok(());
            }
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(_) => {
                return Err(BackupError::InUse {
                    path: db_dir.display().to_string(),
                });
            }
        }
    }
}

/// UTC time for directory names, e.g. `20261201T093000Z`.
fn stamp() -> String {
    let now = crate::time::unix_now();
    match time::OffsetDateTime::from_unix_timestamp(now) {
        Ok(t) => format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => now.to_string(),
    }
}

/// `dir/name`, or `dir/name-2`… if that exists already.
fn unused(dir: &Path, name: &str) -> PathBuf {
    let mut path = dir.join(name);
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = dir.join(format!("{name}-{n}"));
    }
    path
}

/// Writes a backup file owner-only (0600: it holds the session key). Without
/// `force` an existing file is refused (atomically, by `create_new`); with it, the
/// new file is written next to the old one and renamed over it, so the old backup
/// survives a failed write and no older, looser mode carries over.
pub fn write_file(path: &Path, bytes: &[u8], force: bool) -> Result<(), BackupError> {
    let shown = path.display().to_string();
    if !force {
        return write_new(path, bytes).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Io {
                    context: format!("'{shown}' exists already (pass --force to replace it)"),
                    source: e,
                }
            } else {
                io_err(format!("cannot write '{shown}'"))(e)
            }
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}",
        hex::encode(crate::ids::random_bytes::<6>())
    ));
    write_new(&tmp, bytes).map_err(io_err(format!("cannot write '{}'", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(format!("cannot replace '{shown}'"))(e)
    })
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sample() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = s
            .create_user("alice", Some("a@x.org"), Some((31000, 31010)))
            .await
            .unwrap();
        s.create_user("bob", None, Some((31000, 31010)))
            .await
            .unwrap();
        s.create_session(&a.id, 3600).await.unwrap();
        s.issue_login_token(&a.id, 900).await.unwrap();
        s.create_api_token(&a.id, "ci").await.unwrap();
        s.create_admin_token("ops").await.unwrap();
        s.add_ssh_key(&SshKey {
            id: "k1".into(),
            user_id: a.id.clone(),
            fingerprint: "SHA256:abc".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            name: "laptop".into(),
            added: 1,
        })
        .await
        .unwrap();
        s.session_key().unwrap();
        s.container_key().unwrap();
        s.audit("operator", "user.create", "alice", None);
        s.audit("operator", "user.create", "bob", None);
        (dir, s)
    }

    #[test]
    fn every_tree_of_the_store_is_backed_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut opened: Vec<String> =
            s.kv.sled_db()
                .unwrap()
                .tree_names()
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .filter(|n| n != "__sled__default")
                .collect();
        opened.sort();
        let mut listed: Vec<String> = TREES.iter().map(|t| t.name.to_owned()).collect();
        listed.sort();
        assert_eq!(opened, listed);
        assert!(TREES.iter().all(|t| tree(&s, t.name).is_some()));
        // And each handle a backup reads is the tree of its name.
        let mut handed: Vec<&str> = s.trees().iter().map(|(n, _)| *n).collect();
        handed.sort();
        assert_eq!(handed, listed);
        for (name, tree) in s.trees() {
            assert_eq!(tree.name(), name);
        }
    }

    #[tokio::test]
    async fn round_trip_restores_every_record_and_keeps_the_old_store() {
        let (_d, s) = sample().await;
        let bytes = export(&s).await.unwrap();
        let backup = parse(&bytes).unwrap();
        assert_eq!(backup.users(), 2);
        let key = s.session_key().unwrap();

        let target = tempfile::tempdir().unwrap();
        let data = target.path().join("data");
        let done = restore(&data, &backup, false).await.unwrap();
        assert!(done.kept.is_none());
        let r = Store::open(&data).unwrap();
        assert_eq!(r.session_key().unwrap(), key);
        assert_eq!(
            r.snapshot().by_name("alice").unwrap().host_port,
            s.snapshot().by_name("alice").unwrap().host_port
        );
        assert_eq!(r.audit_entries(10).unwrap().len(), 2);
        // New audit entries sort after the restored ones.
        r.audit("operator", "after", "x", None);
        assert_eq!(r.audit_entries(1).unwrap()[0].action, "after");
        assert_eq!(r.audit_entries(10).unwrap().len(), 3);
        drop(r);

        // Now non-empty: refused without force, replaced (old kept) with it.
        assert!(matches!(
            restore(&data, &backup, false).await,
            Err(BackupError::NotEmpty { users: 2, .. })
        ));
        let done = restore(&data, &backup, true).await.unwrap();
        let kept = done.kept.unwrap();
        assert!(kept.is_dir(), "{}", kept.display());
        assert!(
            kept.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("db.old-")
        );
        Store::open(&data).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("restore-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn extra_environments_and_their_container_records_round_trip() {
        let (_d, s) = sample().await;
        let alice = s.snapshot().by_name("alice").cloned().unwrap();
        let (_, lab) = s
            .add_environment(
                &alice.id,
                "lab",
                Some("jupyter"),
                false,
                Some((31000, 31999)),
                |_| Ok::<_, ()>(()),
            )
            .await
            .unwrap()
            .unwrap();
        s.put_container_record(&ContainerRecord {
            user_id: alice.id.clone(),
            environment: Some(lab.slug.to_string()),
            name: "spawngate-u-lab".into(),
            desired: crate::store::Desired::Stopped,
            container_id: None,
            created_at: None,
            started_at: None,
            stopped_at: None,
            last_error: None,
            last_activity: Some(7),
            pooled_from: None,
        })
        .await
        .unwrap();
        let backup = parse(&export(&s).await.unwrap()).unwrap();
        let target = tempfile::tempdir().unwrap();
        let data = target.path().join("data");
        restore(&data, &backup, false).await.unwrap();
        let r = Store::open(&data).unwrap();
        let env = r.snapshot().environment(&lab.slug).unwrap();
        assert_eq!((env.name(), env.profile()), ("lab", Some("jupyter")));
        assert_eq!(env.host_port(), lab.host_port);
        let record = r.container_record(&env.record_key()).unwrap().unwrap();
        assert_eq!(record.last_activity, Some(7));
        // Removing it frees its slug and record in the restored store too.
        assert!(
            r.remove_environment(&alice.id, "lab")
                .await
                .unwrap()
                .is_some()
        );
        assert!(r.snapshot().environment(&lab.slug).is_none());
        assert!(r.container_record(&env.record_key()).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_store_in_use_is_refused() {
        let (dir, s) = sample().await;
        let backup = parse(&export(&s).await.unwrap()).unwrap();
        assert!(matches!(
            restore(dir.path(), &backup, true).await,
            Err(BackupError::InUse { .. })
        ));
    }

    fn line_error(bytes: &[u8]) -> (usize, String) {
        match parse(bytes) {
            Err(BackupError::Line { line, message }) => (line, message),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn corrupt_truncated_and_newer_files_are_refused_naming_the_line() {
        let (_d, s) = sample().await;
        let bytes = export(&s).await.unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        // Cut in the middle of a record line.
        let cut = text.find(&lines[3][10..]).unwrap();
        let (line, message) = line_error(&bytes[..cut]);
        assert_eq!(line, 4);
        assert!(message.contains("truncated"), "{message}");

        // Cut at a line boundary: no end line.
        let whole: String = lines[..5].iter().map(|l| format!("{l}\n")).collect();
        let (line, message) = line_error(whole.as_bytes());
        assert_eq!(line, 5);
        assert!(message.contains("without its end line"), "{message}");

        // A changed value that is still valid JSON: the checksum catches it.
        let edited = text.replacen("alice", "alicf", 1);
        let (line, message) = line_error(edited.as_bytes());
        assert_eq!(line, lines.len());
        assert!(message.contains("checksum"), "{message}");

        // Newer format.
        let newer = text.replacen("\"version\":1", "\"version\":2", 1);
        let (line, message) = line_error(newer.as_bytes());
        assert_eq!(line, 1);
        assert!(message.contains("newer"), "{message}");

        assert_eq!(line_error(b"").0, 1);
        assert!(
            line_error(b"{\"hello\":1}\n")
                .1
                .contains("not a spawngate backup")
        );
    }

    #[tokio::test]
    async fn index_entries_must_match_the_users() {
        let (_d, s) = sample().await;
        let text = String::from_utf8(export(&s).await.unwrap()).unwrap();
        // Drop alice's name index entry and re-seal the file.
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !(l.contains("\"tree\":\"user_names\"") && l.contains("\"key\":\"alice\"")))
            .collect();
        let body: String = kept[..kept.len() - 1]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect();
        let records = kept.len() - 2;
        let end = serde_json::json!({
            "end": FORMAT, "records": records,
            "sha256": hex::encode(Sha256::digest(body.as_bytes())),
        });
        let sealed = format!("{body}{end}\n");
        let (_, message) = line_error(sealed.as_bytes());
        assert!(
            message.contains("user 'alice' has no matching entry in tree 'user_names'"),
            "{message}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_taken_during_writes_is_a_state_the_store_was_in() {
        // Users are created and deleted (multi-tree changes) while backups run;
        // every backup must pass the index cross-check.
        let (_d, s) = sample().await;
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    let u = s
                        .create_user(
                            &format!("w{i}"),
                            Some(&format!("w{i}@x.org")),
                            Some((32000, 32999)),
                        )
                        .await
                        .unwrap();
                    s.create_session(&u.id, 60).await.unwrap();
                    s.delete_user(&u, false).await.unwrap();
                }
            })
        };
        while !writer.is_finished() {
            let s = s.clone();
            let bytes = export(&s).await.unwrap();
            parse(&bytes).unwrap();
        }
        writer.await.unwrap();
    }

    #[test]
    fn backup_files_are_private_and_not_overwritten_without_force() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.jsonl");
        write_file(&path, b"one", false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write_file(&path, b"two", false).unwrap_err().to_string();
        assert!(err.contains("exists already"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&path, b"two", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
