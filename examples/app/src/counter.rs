//! A visit counter persisted as a small text file in `$DATA_DIR`.
//!
//! Every update reads the current value, writes the new one to a temporary
//! file in the same directory, fsyncs it and renames it over the real file, so
//! a crash or a full disk never leaves a half-written counter behind. Failures
//! are reported to the caller (and shown on the page) instead of aborting.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// File name of the counter inside the data directory.
pub const FILE_NAME: &str = "visits";

/// Result of reading or bumping the counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visits {
    /// The counter value (after the increment, if one was requested), when known.
    pub count: Option<u64>,
    /// Why the counter could not be read or saved, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Counter {
    path: PathBuf,
    tmp_path: PathBuf,
    /// Serialises read-modify-write cycles within this process. It is only ever
    /// taken inside `spawn_blocking`, never held across an `.await`.
    lock: Arc<Mutex<()>>,
}

impl Counter {
    pub fn new(data_dir: &Path) -> Self {
        Counter {
            path: data_dir.join(FILE_NAME),
            tmp_path: data_dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id())),
            lock: Arc::new(Mutex::new(())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the counter, incrementing (and persisting) it first if `increment`.
    pub async fn visit(&self, increment: bool) -> Visits {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.visit_blocking(increment)).await {
            Ok(visits) => visits,
            Err(err) => Visits {
                count: None,
                error: Some(format!("visit counter task failed: {err}")),
            },
        }
    }

    /// Blocking version of [`Counter::visit`].
    pub fn visit_blocking(&self, increment: bool) -> Visits {
        // A poisoned lock only means another update panicked; the file on disk
        // is still consistent thanks to the atomic rename, so carry on.
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = match read_count(&self.path) {
            Ok(n) => n,
            Err(err) => {
                return Visits {
                    count: None,
                    error: Some(err),
                };
            }
        };
        if !increment {
            return Visits {
                count: Some(current),
                error: None,
            };
        }
        let next = current.saturating_add(1);
        match write_atomic(&self.path, &self.tmp_path, next) {
            Ok(()) => Visits {
                count: Some(next),
                error: None,
            },
            Err(err) => Visits {
                count: Some(next),
                error: Some(format!(
                    "could not save the visit counter to {}: {err}",
                    self.path.display()
                )),
            },
        }
    }
}

/// Reads the stored counter; a missing file counts as zero.
fn read_count(path: &Path) -> Result<u64, String> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|err| {
            format!(
                "the visit counter file {} is corrupt ({err}); leaving it alone",
                path.display()
            )
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(format!(
            "could not read the visit counter from {}: {err}",
            path.display()
        )),
    }
}

/// Writes `value` to `tmp`, fsyncs it and renames it over `path`.
fn write_atomic(path: &Path, tmp: &Path, value: u64) -> io::Result<()> {
    let result = (|| {
        let mut file = File::create(tmp)?;
        file.write_all(format!("{value}\n").as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(tmp, path)?;
        // Make the rename itself durable; best effort, not every filesystem
        // lets a directory be opened and synced.
        if let Some(dir) = path.parent()
            && let Ok(dir) = File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "spawngate-example-app-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        assert!(fs::create_dir_all(&dir).is_ok());
        dir
    }

    #[test]
    fn counts_up_and_persists() {
        let dir = scratch_dir("count");
        let counter = Counter::new(&dir);
        assert_eq!(counter.visit_blocking(false).count, Some(0));
        assert_eq!(counter.visit_blocking(true).count, Some(1));
        assert_eq!(counter.visit_blocking(true).count, Some(2));
        assert_eq!(counter.visit_blocking(false).count, Some(2));
        // A fresh counter (e.g. after a restart) sees the stored value.
        let again = Counter::new(&dir);
        let visits = again.visit_blocking(true);
        assert_eq!(visits.count, Some(3));
        assert_eq!(visits.error, None);
        assert_eq!(
            fs::read_to_string(dir.join(FILE_NAME)).ok().as_deref(),
            Some("3\n")
        );
        // No temporary files are left behind.
        let leftovers = fs::read_dir(&dir).map(|entries| entries.count()).ok();
        assert_eq!(leftovers, Some(1));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unwritable_directory_reports_an_error() {
        let dir = scratch_dir("missing").join("does-not-exist");
        let counter = Counter::new(&dir);
        let visits = counter.visit_blocking(true);
        assert_eq!(visits.count, Some(1));
        assert!(visits.error.is_some_and(|e| e.contains("could not save")));
    }

    #[test]
    fn corrupt_file_is_reported_and_kept() {
        let dir = scratch_dir("corrupt");
        assert!(fs::write(dir.join(FILE_NAME), "not a number").is_ok());
        let counter = Counter::new(&dir);
        let visits = counter.visit_blocking(true);
        assert_eq!(visits.count, None);
        assert!(visits.error.is_some_and(|e| e.contains("corrupt")));
        assert_eq!(
            fs::read_to_string(dir.join(FILE_NAME)).ok().as_deref(),
            Some("not a number")
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
